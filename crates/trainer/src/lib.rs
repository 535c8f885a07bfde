//! # lpl-trainer
//!
//! The thin crate that wires the others from one TOML run config ([`run_config`]), and
//! every loop that iterates over a dataset: autoencoder training ([`ae_training`]), latent
//! cache building ([`cache_building`]), and the diffusion training loop
//! ([`diffusion_training`]) minimising an [`objective`] (MSE, MSE + LPL, MSE + pixel, or a
//! user's) with AdamW ([`adamw`]), EMA ([`ema`]), and the collaborators of
//! [`training_hooks`] (metrics, atomic checkpoints with exact resume, periodic evaluation,
//! grids, user hooks); sampling requests ([`sampling`]) and trained runs opened for
//! sampling ([`evaluation`]). The ablation sweep and its report live in `lpl-ablation`.
//!
//! Depends on every lpl crate below it (schedulers, autoencoder, denoiser, loss, data,
//! metrics, tensor-io, torch-ext).

#![warn(missing_docs)]

pub mod adamw;
pub mod ae_training;
pub mod cache_building;
pub mod calibration;
pub mod diffusion_training;
pub mod distributed;
pub mod ema;
mod error;
pub mod evaluation;
pub mod objective;
pub mod profile_summary;
pub mod progress;
pub mod registry;
pub mod run_checkpoint;
pub mod run_config;
pub mod sampling;
mod step_log;
pub mod tensorboard;
pub mod training_hooks;

pub use error::{Result, TrainError};
