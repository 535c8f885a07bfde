//! # lpl-metrics
//!
//! What an ablation table reports: (to come) Frechet distances (f64, stable matrix square
//! root) in the features of real pretrained networks, precision/recall and density/coverage,
//! radially averaged power spectra with per-band errors, and image grids; now: [`psnr`] for
//! reconstructions.
//!
//! Depends on nothing else of lpl.

#![warn(missing_docs)]

pub mod grid;
pub mod psnr;

pub use psnr::psnr;
