//! # lpl-trainer
//!
//! The thin crate that wires the others from one TOML run config, and every loop that
//! iterates over a dataset. Now: autoencoder training ([`ae_training`]). To come: the
//! diffusion training loop (MSE and MSE + LPL), AdamW with named savable state, EMA, mixed
//! precision, self-describing checkpoints with exact resume, latent cache building and
//! sampling for evaluation.
//!
//! Depends on every other lpl crate.

#![warn(missing_docs)]

pub mod ae_training;
mod error;
pub mod progress;

pub use error::{Result, TrainError};
