//! # lpl-ablation
//!
//! The MSE vs MSE + LPL ablation (the paper's central experiment) as a sweep over
//! [`lpl_trainer`] runs: its config ([`config`]), the driver that trains or reuses every
//! stage and evaluates each arm ([`driver`]), the positive control of every arm
//! ([`control`]), the statistics of the comparison ([`stats`]),
//! the report (`report.md`, a self-contained `report.html`, `results.json`, `results.csv`,
//! plots; [`report`]) and the provenance of every result ([`provenance`]).
//!
//! `lpl ablate` and `cargo xtask ablate` run it; a user's own sweep calls [`run_ablation`].

#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod driver;
mod error;
pub mod provenance;
pub mod report;
pub mod stats;

pub use config::{AblationConfig, LplVariant};
pub use driver::{ArmKey, ArmResult, prepare_arms, run_ablation, run_arm};
pub use error::{AblationError, Result};
