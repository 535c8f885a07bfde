//! # lpl-loss
//!
//! The latent perceptual loss of Berrada et al., "Boosting Latent Diffusion with Perceptual
//! Objectives" (ICLR 2025), exactly as `shared/LPL.md` specifies: the predicted and true clean
//! latents go through the frozen decoder of any `Autoencoder` up to a chosen depth; the
//! feature maps are outlier-masked, normalised and compared per layer, gated by SNR so only
//! low-noise samples are decoded. Presets `paper` and `diffusers` (numerically equal to the
//! diffusers research port), and the `pixel` baseline for ablations.
//!
//! Depends on lpl-autoencoder (feature taps, codec) and lpl-schedulers (x0 conversion, SNR).
