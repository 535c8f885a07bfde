//! # lpl-trainer
//!
//! The thin crate that wires the others from one TOML run config, and every loop that
//! iterates over a dataset: autoencoder training ([`ae_training`]), latent cache building
//! ([`cache_building`]), the diffusion training loop with MSE and MSE + LPL
//! ([`diffusion_training`]: AdamW with named savable state, EMA, atomic checkpoints with
//! exact resume, JSONL metrics, bf16 autocast), sampling ([`sampling`]), evaluation of runs
//! ([`evaluation`]), the ablation driver and its report ([`ablation`], [`report`]) with the
//! provenance of every result ([`provenance`]).
//!
//! Depends on every other lpl crate.

#![warn(missing_docs)]

pub mod ablation;
pub mod adamw;
pub mod ae_training;
pub mod cache_building;
pub mod diffusion_training;
pub mod ema;
mod error;
pub mod evaluation;
pub mod objective;
pub mod progress;
pub mod provenance;
pub mod report;
pub mod run_checkpoint;
pub mod run_config;
pub mod sampling;
mod step_log;
pub mod training_hooks;

pub use error::{Result, TrainError};
