//! # lpl-metrics
//!
//! What an ablation table reports: Frechet distances between Gaussian feature statistics (f64,
//! a stable matrix square root, streaming accumulation, saved statistics) ([`frechet`]),
//! [`psnr`] for reconstructions and image grids ([`grid`]). To come: the pretrained feature
//! networks (EfficientNet-Lite0, pytorch-fid's Inception), precision/recall, density/coverage
//! and power spectra.
//!
//! Depends on nothing else of lpl.

#![warn(missing_docs)]

pub mod frechet;
pub mod grid;
pub mod psnr;

pub use frechet::{GaussianStats, StatsAccumulator, StatsError, frechet_distance};
pub use psnr::psnr;
