//! Every metric of generated against real images in one call: the Frechet distance in a
//! feature network's space, precision / recall / density / coverage (k = 3) on the same
//! features, and the power-spectrum band errors.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::features::{FeatureExtractor, extract_features};
use crate::frechet::{StatsAccumulator, StatsError, frechet_distance};
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

/// Compares `fake` `(M, C, H, W)` with `real` `(N, C, H, W)` (pixels in `[0, 1]`, same size)
/// in `net`'s features; also returns the spectra (for a plot).
pub fn compare_images(
    net: &dyn FeatureExtractor,
    real: &Tensor,
    fake: &Tensor,
) -> Result<(ImageMetrics, SpectrumComparison), StatsError> {
    let (fr, ff) = (extract_features(net, real, 64), extract_features(net, fake, 64));
    let stats = |f: &Tensor| {
        let mut acc = StatsAccumulator::new(net.dim());
        acc.add(f)?;
        acc.finish()
    };
    let fd = frechet_distance(&stats(&fr)?, &stats(&ff)?)?;
    let p = prdc(&fr, &ff, 3)?;
    let spectrum = compare_spectra(real, fake)?;
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
            count: (real.size()[0], fake.size()[0]),
        },
        spectrum,
    ))
}
