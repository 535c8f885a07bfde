//! # lpl-metrics
//!
//! What an ablation table reports: Frechet distances between Gaussian feature statistics (f64,
//! a stable matrix square root, streaming accumulation, saved statistics) ([`frechet`]),
//! [`psnr`] for reconstructions, image grids ([`grid`]), and the EfficientNet-Lite0 feature
//! network with its ImageNet weights ([`effnet`]), precision/recall and density/coverage
//! ([`prdc`]), and radially averaged power spectra with per-band errors ([`spectrum`]). To
//! come: pytorch-fid's Inception, SSIM, spectrum plots.
//!
//! Depends on nothing else of lpl.

#![warn(missing_docs)]

pub mod effnet;
pub mod frechet;
pub mod grid;
pub mod prdc;
pub mod psnr;
pub mod spectrum;

pub use effnet::EfficientNetLite0;
pub use frechet::{GaussianStats, StatsAccumulator, StatsError, frechet_distance};
pub use prdc::{Prdc, prdc};
pub use psnr::psnr;
pub use spectrum::{SpectrumComparison, compare_spectra, radial_power_spectrum};
