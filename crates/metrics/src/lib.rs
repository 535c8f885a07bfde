//! # lpl-metrics
//!
//! What an ablation table reports: Frechet distances between Gaussian feature statistics (f64,
//! a stable matrix square root, streaming accumulation, statistics saved as safetensors)
//! ([`frechet`]) in the features of a [`FeatureExtractor`]: EfficientNet-Lite0 with its
//! ImageNet weights ([`effnet`], "FD-EffNet") or pytorch-fid's Inception-v3 ([`inception`],
//! "FID", user-supplied weights); precision/recall and density/coverage ([`prdc`](mod@prdc));
//! radially averaged power spectra with per-band errors and a PNG plot ([`spectrum`],
//! [`plot`]); PSNR and SSIM ([`psnr`](mod@psnr)); image grids ([`grid`]); all of them at once with
//! [`compare_images`].
//!
//! Standalone use, without any weights: statistics of two feature sets, their distance, the
//! k-NN metrics, and the spectra of a sharp and a blurred image set.
//!
//! ```
//! use lpl_metrics::{compare_spectra, frechet_distance, prdc, ssim, StatsAccumulator};
//! use tch::{Device, Kind, Tensor};
//!
//! tch::manual_seed(0);
//! let real = Tensor::randn([500, 16], (Kind::Float, Device::Cpu)); // (N, D) features
//! let fake = Tensor::randn([500, 16], (Kind::Float, Device::Cpu)) * 1.5 + 0.5;
//! let stats = |f: &Tensor| {
//!     let mut acc = StatsAccumulator::new(16);
//!     for batch in f.split(128, 0) {
//!         acc.add(&batch)?; // streaming: batches of any size
//!     }
//!     acc.finish()
//! };
//! let (sr, sf) = (stats(&real)?, stats(&fake)?);
//! assert!(frechet_distance(&sr, &sr)?.abs() < 1e-9);
//! assert!(frechet_distance(&sr, &sf)? > 4.0); // ||mu||^2 = 16 * 0.25 alone
//! let p = prdc(&real, &fake, 3)?;
//! assert!(p.precision < 0.9 && p.recall > 0.9); // wider fake cloud: covers real, not inside it
//!
//! let images = Tensor::rand([16, 3, 32, 32], (Kind::Float, Device::Cpu)); // (N, C, H, W) in [0, 1]
//! let blurred = images.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>);
//! let spectra = compare_spectra(&images, &blurred)?;
//! assert!(spectra.high_band_error > spectra.low_band_error);
//! let s = ssim(&images, &blurred, 1.0); // (N,) per image
//! assert!(f64::try_from(s.max())? < 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Depends on nothing else of lpl.

#![warn(missing_docs)]

pub mod comparison;
pub mod effnet;
pub mod features;
pub mod frechet;
pub mod grid;
pub mod inception;
pub mod plot;
pub mod prdc;
pub mod psnr;
pub mod spectrum;

pub use comparison::{ImageMetrics, RealReference, compare_images};
pub use effnet::EfficientNetLite0;
pub use features::{FeatureExtractor, extract_features};
pub use frechet::{GaussianStats, StatsAccumulator, StatsError, frechet_distance};
pub use inception::FidInceptionV3;
pub use plot::{LinePlot, Series};
pub use prdc::{Prdc, prdc};
pub use psnr::{psnr, ssim};
pub use spectrum::{SpectrumComparison, compare_spectra, radial_power_spectrum};
