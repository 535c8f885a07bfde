//! # lpl-denoiser
//!
//! The networks that get trained: the object-safe [`Denoiser`] trait
//! (`forward(x_t: (B, C, H, W), t: (B,), cond) -> (B, C_out, H, W)`), a [`Dit`] mirroring
//! diffusers' `DiTTransformer2DModel` (presets S/B/L/XL x patch 2/4/8 and `dit-tiny`), and a
//! [`UNet`] of the diffusers `UNet2DModel` family; class-conditional with label
//! dropout to a null class for classifier-free guidance; parameter counts.
//!
//! ```
//! use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig, parameter_count};
//! use tch::{Device, Kind, Tensor};
//!
//! let dit = Dit::new(&DitConfig::preset("dit-tiny")?, Device::Cpu, Kind::Float)?;
//! let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let t = Tensor::from_slice(&[10.0f32, 900.0]);
//! let labels = Conditioning::labels(Tensor::from_slice(&[3i64, 10])); // 10 = null class
//! let out = dit.forward(&x, &t, &labels)?;
//! assert_eq!(out.size(), vec![2, 4, 8, 8]);
//! // adaLN-Zero: a freshly initialised DiT predicts exactly zero
//! assert_eq!(f64::try_from(out.abs().max())?, 0.0);
//! assert!(parameter_count(dit.var_store()) > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Depends on lpl-tensor-io (weights files) only.

#![warn(missing_docs)]

mod denoiser;
pub mod dit;
pub mod embeddings;
mod error;
pub mod unet;

pub use denoiser::{Conditioning, Denoiser, parameter_count};
pub use dit::{DIT_PRESETS, Dit, DitConfig};
pub use error::{DenoiserError, Result};
pub use unet::{UNET_PRESETS, UNet, UNetConfig};
