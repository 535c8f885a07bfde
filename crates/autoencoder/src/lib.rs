//! # lpl-autoencoder
//!
//! The autoencoders whose latent space the diffusion model lives in: `AutoencoderKL` with
//! module names mirroring the diffusers state dict (so Hugging Face `vae/` folders of SD 1.x,
//! SDXL, SD3 and FLUX.1 load without renaming), the TAESD family, the `Autoencoder` trait,
//! decoder feature taps for the latent perceptual loss (`decode_features(z, depth)`: mid block
//! and up-block outputs), the `LatentCodec` that owns every latent constant (input range,
//! scale, shift or per-channel statistics), and the reconstruction + KL loss for training a
//! small autoencoder.
//!
//! Depends on nothing else of lpl.
