//! Every metric of generated against real images in one call: the Frechet distance in a
//! feature network's space, precision / recall / density / coverage (k = 3) on the same
//! features, and the power-spectrum band errors.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::features::{FeatureExtractor, extract_features};
use crate::frechet::{GaussianStats, StatsAccumulator, StatsError, frechet_distance};
use crate::prdc::prdc;
use crate::spectrum::{SpectrumComparison, compare_spectra};

/// The numbers of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetrics {
    /// Name of the distance ("FD-EffNet", "FID", ...).
    pub metric: String,
    /// The Frechet distance (lower is better).
    pub fd: f64,
    /// k = 3 precision (fidelity).
    pub precision: f64,
    /// k = 3 recall (diversity).
    pub recall: f64,
    /// k = 3 density.
    pub density: f64,
    /// k = 3 coverage.
    pub coverage: f64,
    /// Mean |log10 power| error of the radial spectrum, radii <= R/2.
    pub spectrum_low: f64,
    /// The same above R/2 (the high frequencies).
    pub spectrum_high: f64,
    /// Images compared per side.
    pub count: (i64, i64),
}

/// What the real side of a comparison needs, computed once and reused for every generated
/// set (an ablation compares many against the same real images).
#[derive(Debug)]
pub struct RealReference {
    /// `(N, D)` features of the real images.
    pub features: Tensor,
    /// Their Gaussian statistics.
    pub stats: GaussianStats,
    /// The real images `(N, C, H, W)` in `[0, 1]` (for the spectra).
    pub images: Tensor,
}

/// Images per feature-network forward pass. Small on purpose: at 224x224 a batch of 64 makes
/// activations of hundreds of MB, which glibc serves with fresh `mmap`s, so most of the time
/// went to zero-filling pages in the kernel; at 4 they stay under its mmap threshold and are
/// reused (measured: 500 + 500 images, 2 CPU threads, see docs/benchmarks.md).
pub const FEATURE_BATCH: i64 = 4;

impl RealReference {
    /// Features and statistics of `real` `(N, C, H, W)` pixels in `[0, 1]`.
    pub fn new(net: &dyn FeatureExtractor, real: &Tensor) -> Result<Self, StatsError> {
        let features = extract_features(net, real, FEATURE_BATCH);
        let stats = gaussian(net.dim(), &features)?;
        Ok(Self { features, stats, images: real.shallow_clone() })
    }

    /// Compares `fake` `(M, C, H, W)` (pixels in `[0, 1]`, the real images' size) with the
    /// reference in `net`'s features (the network the reference was made with); also returns
    /// the spectra (for a plot).
    pub fn compare(
        &self,
        net: &dyn FeatureExtractor,
        fake: &Tensor,
    ) -> Result<(ImageMetrics, SpectrumComparison), StatsError> {
        let ff = extract_features(net, fake, FEATURE_BATCH);
        let fd = frechet_distance(&self.stats, &gaussian(net.dim(), &ff)?)?;
        let p = prdc(&self.features, &ff, 3)?;
        let spectrum = compare_spectra(&self.images, fake)?;
        Ok((
            ImageMetrics {
                metric: net.metric_name().to_string(),
                fd,
                precision: p.precision,
                recall: p.recall,
                density: p.density,
                coverage: p.coverage,
                spectrum_low: spectrum.low_band_error,
                spectrum_high: spectrum.high_band_error,
                count: (self.images.size()[0], fake.size()[0]),
            },
            spectrum,
        ))
    }
}

fn gaussian(dim: i64, features: &Tensor) -> Result<GaussianStats, StatsError> {
    let mut acc = StatsAccumulator::new(dim);
    acc.add(features)?;
    acc.finish()
}

/// Compares `fake` `(M, C, H, W)` with `real` `(N, C, H, W)` (pixels in `[0, 1]`, same size)
/// in `net`'s features; also returns the spectra (for a plot).
pub fn compare_images(
    net: &dyn FeatureExtractor,
    real: &Tensor,
    fake: &Tensor,
) -> Result<(ImageMetrics, SpectrumComparison), StatsError> {
    RealReference::new(net, real)?.compare(net, fake)
}
