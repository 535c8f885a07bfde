//! # lpl-autoencoder
//!
//! The autoencoders whose latent space the diffusion model lives in: [`AutoencoderKl`] with
//! module names mirroring the diffusers state dict (so Hugging Face `vae/` folders of SD 1.x,
//! SDXL, SD3 and FLUX.1 load without renaming), the [`Taesd`] family, the [`Autoencoder`]
//! trait, decoder feature taps for the latent perceptual loss
//! ([`Autoencoder::decode_features`]: mid block and up-block outputs), and the
//! [`LatentCodec`] that owns every latent constant (input range, scale, shift or per-channel
//! statistics).
//!
//! Depends on nothing else of lpl.
//!
//! ```
//! use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
//! use tch::{Device, Kind, Tensor};
//!
//! // A small randomly initialised VAE (use `AutoencoderKl::from_diffusers_dir` for real ones).
//! let config = AutoencoderKlConfig::preset("tiny")?;
//! let vae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float)?;
//! let images = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
//! let z = vae.encode(&images)?.mode();                 // (2, 4, 8, 8) decoder latents
//! let model_space = vae.codec().to_model(&z)?;           // what a diffusion model sees
//! let back = vae.decode(&vae.codec().to_decoder(&model_space)?)?;
//! assert_eq!(back.size(), vec![2, 3, 16, 16]);
//! // Decoder features for the latent perceptual loss: mid block + both up blocks.
//! let features = vae.decode_features(&z, 2, true)?;
//! let layers = vae.feature_layers();
//! assert_eq!(features.len(), 3);
//! assert_eq!(features[2].size()[1], layers[2].channels);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod autoencoder;
pub mod checkpoint;
pub mod codec;
mod error;
pub mod kl;
pub mod loss;
pub mod taesd;

pub use autoencoder::{Autoencoder, FeatureLayer, LatentDistribution};
pub use checkpoint::{FormatOpener, open, register_format};
pub use codec::{InputRange, LatentCodec, LatentNormalization};
pub use error::{AutoencoderError, Result};
pub use kl::{AutoencoderKl, AutoencoderKlConfig};
pub use loss::{AeLoss, Reconstruction, ae_loss};
pub use taesd::{Taesd, TaesdVariant};
