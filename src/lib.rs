//! # lpl
//!
//! Latent diffusion training with the latent perceptual loss (LPL) of Berrada et al.,
//! "Boosting Latent Diffusion with Perceptual Objectives" (ICLR 2025), and the ablations that
//! compare it with plain MSE training.
//!
//! This facade re-exports the workspace crates under short names and holds the `lpl` command
//! line ([`cli`], callable from a user's own binary after registering models) and the
//! environment report of `lpl doctor`. Depend on a single crate
//! (`lpl-schedulers`, `lpl-autoencoder`, ...) when only that part is wanted.

pub use lpl_ablation as ablation;
pub use lpl_autoencoder as autoencoder;
pub use lpl_data as data;
pub use lpl_denoiser as denoiser;
pub use lpl_loss as loss;
pub use lpl_metrics as metrics;
pub use lpl_schedulers as schedulers;
pub use lpl_tensor_io as tensor_io;
pub use lpl_trainer as trainer;

pub mod cli;
pub mod doctor;
