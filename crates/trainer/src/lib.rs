//! # lpl-trainer
//!
//! The thin crate that wires the others from one TOML run config: components, the training
//! loop (MSE and MSE + LPL), AdamW with named savable state, EMA, mixed precision, atomic
//! self-describing checkpoints with exact resume, logging, and every other loop over a
//! dataset (autoencoder training, latent cache building, sampling for evaluation).
//!
//! Depends on every other lpl crate.
