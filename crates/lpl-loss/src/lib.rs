//! # lpl-loss
//!
//! The latent perceptual loss of Berrada et al., "Boosting Latent Diffusion with Perceptual
//! Objectives" (ICLR 2025), exactly as shared/LPL.md specifies: the predicted and true clean
//! latents go through the frozen decoder of any [`Autoencoder`](lpl_autoencoder::Autoencoder)
//! up to a chosen depth; the feature maps are outlier-masked, normalised and compared per
//! layer, gated by SNR so only low-noise samples are decoded. Presets `paper` and
//! `diffusers` ([`LplConfig::preset`]), and the [`pixel_loss`] baseline for ablations.
//!
//! ```
//! use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
//! use lpl_loss::{LatentPerceptualLoss, LplConfig, x0_from_prediction};
//! use lpl_schedulers::{NoiseSchedule, Parameterization};
//! use tch::{Device, Kind, Tensor};
//!
//! let mut vae = AutoencoderKl::new(&AutoencoderKlConfig::preset("tiny")?, Device::Cpu, Kind::Float)?;
//! vae.set_requires_grad(false); // the decoder is frozen
//! let codec = vae.codec().clone();
//! let lpl = LatentPerceptualLoss::new(&vae, codec, LplConfig::preset("paper")?)?;
//!
//! let schedule = NoiseSchedule::preset("sd15")?;
//! let z0 = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let eps = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let t = Tensor::from_slice(&[50i64, 900]); // only the first is inside the SNR gate
//! let z_t = schedule.add_noise(&z0, &eps, &t)?;
//! let eps_hat = (&eps + Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu)) * 0.1).set_requires_grad(true);
//! let x0_hat = x0_from_prediction(&eps_hat, &z_t, &t, Parameterization::Eps, &schedule)?;
//! let out = lpl.loss(&x0_hat, &z0, &t, &schedule, Parameterization::Eps)?;
//! out.total.backward();
//! assert_eq!(f64::try_from(&out.kept_fraction)?, 0.5);
//! assert_eq!(out.per_layer.size(), vec![3]); // mid block + 2 up blocks
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Depends on lpl-autoencoder (feature taps, codec) and lpl-schedulers (x0 conversion, SNR).

#![warn(missing_docs)]

pub mod config;
mod error;
pub mod loss;
pub mod mask;
pub mod normalize;
mod pixel;
mod x0;

pub use config::{
    BatchReduce, Distance, LPL_PRESETS, LayerWeights, LplConfig, LplGate, MaskSource,
    Normalization, SpatialReduce,
};
pub use error::{LplError, Result};
pub use loss::{LatentPerceptualLoss, LayerPlan, LplOutput};
pub use pixel::pixel_loss;
pub use x0::x0_from_prediction;
