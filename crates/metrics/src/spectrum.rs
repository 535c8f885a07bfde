//! Radially averaged power spectra of images and the per-band error between generated and
//! real spectra (the paper reports that LPL mostly improves high frequencies).

use tch::{Kind, Tensor};

use crate::frechet::StatsError;
use crate::plot::{LinePlot, Series};

/// The radially averaged power spectrum of images `(N, C, H, W)` in `[0, 1]`: grey (the mean
/// of the channels), each image minus its mean, `|FFT2|^2 / (H W)`, averaged over images, then
/// averaged over the frequencies `(fy, fx)` (integers in `[-H/2, H/2)` x `[-W/2, W/2)`) of each
/// integer radius `round(sqrt(fy^2 + fx^2))`, for radii `0..=min(H, W) / 2`. `(R + 1)` values.
pub fn radial_power_spectrum(images: &Tensor) -> Result<Vec<f64>, StatsError> {
    let (_, _, h, w) = images.size4().map_err(|e| StatsError::Input(e.to_string()))?;
    let grey = images.f_to_kind(Kind::Double)?.f_mean_dim(1, false, Kind::Double)?; // (N, H, W)
    let centred = &grey - grey.f_mean_dim(&[1i64, 2][..], true, Kind::Double)?;
    let power = centred.f_fft_fft2(None::<&[i64]>, [1i64, 2], "backward")?.f_abs()?.f_square()?
        / (h * w) as f64;
    let mean = Vec::<f64>::try_from(power.f_mean_dim(0, false, Kind::Double)?.f_flatten(0, -1)?)?;
    let r_max = h.min(w) / 2;
    let mut sum = vec![0.0; r_max as usize + 1];
    let mut count = vec![0usize; r_max as usize + 1];
    for y in 0..h {
        let fy = if y < (h + 1) / 2 { y } else { y - h };
        for x in 0..w {
            let fx = if x < (w + 1) / 2 { x } else { x - w };
            let r = ((fy * fy + fx * fx) as f64).sqrt().round() as i64;
            if r <= r_max {
                sum[r as usize] += mean[(y * w + x) as usize];
                count[r as usize] += 1;
            }
        }
    }
    Ok(sum.iter().zip(&count).map(|(s, c)| s / (*c).max(1) as f64).collect())
}

/// Generated vs real spectra, compared band by band in log10 power.
#[derive(Debug, Clone, PartialEq)]
pub struct SpectrumComparison {
    /// Real images' spectrum by radius.
    pub real: Vec<f64>,
    /// Generated images' spectrum by radius.
    pub fake: Vec<f64>,
    /// `|log10 fake - log10 real|` for radii `1..=R` (the DC term is removed).
    pub band_error: Vec<f64>,
    /// Mean band error over radii `<= R / 2`.
    pub low_band_error: f64,
    /// Mean band error over radii `> R / 2` (the high frequencies).
    pub high_band_error: f64,
}

impl SpectrumComparison {
    /// The two spectra (radii 1..=R, log power) as a plot; `fake_name` labels the generated
    /// curve.
    pub fn plot(&self, title: &str, fake_name: &str) -> LinePlot {
        let series = |name: &str, v: &[f64]| Series {
            name: name.to_string(),
            points: v.iter().enumerate().skip(1).map(|(r, &p)| (r as f64, p)).collect(),
        };
        LinePlot {
            title: title.to_string(),
            x_label: "spatial frequency (radius, cycles per image)".into(),
            y_label: "mean power".into(),
            log_y: true,
            series: vec![series("real", &self.real), series(fake_name, &self.fake)],
        }
    }
}

/// Compares the spectra of `fake` and `real` images (same size).
pub fn compare_spectra(real: &Tensor, fake: &Tensor) -> Result<SpectrumComparison, StatsError> {
    if real.size()[1..] != fake.size()[1..] {
        return Err(StatsError::Input(format!(
            "image sizes differ: {:?} vs {:?}",
            real.size(),
            fake.size()
        )));
    }
    let (r, f) = (radial_power_spectrum(real)?, radial_power_spectrum(fake)?);
    let floor = 1e-12;
    let band_error: Vec<f64> = r
        .iter()
        .zip(&f)
        .skip(1)
        .map(|(a, b)| (b.max(floor).log10() - a.max(floor).log10()).abs())
        .collect();
    let half = band_error.len() / 2;
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    Ok(SpectrumComparison {
        low_band_error: mean(&band_error[..half]),
        high_band_error: mean(&band_error[half..]),
        band_error,
        real: r,
        fake: f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpl_torch_ext::GlobalRng;
    use tch::Device;

    #[test]
    fn a_cosine_puts_its_power_at_its_frequency() {
        let _rng = GlobalRng::lock();
        // cos(2 pi 4 x / 32), constant along y: all power at (fy, fx) = (0, +-4), radius 4
        let x = Tensor::arange(32, (Kind::Double, Device::Cpu))
            * (2.0 * std::f64::consts::PI * 4.0 / 32.0);
        let img = (x.cos() * 0.5 + 0.5).view([1, 1, 1, 32]).repeat([2, 1, 32, 1]);
        let s = radial_power_spectrum(&img).unwrap();
        assert_eq!(s.len(), 17);
        let total: f64 = s.iter().sum();
        // 0.999: an exact f64 cosine leaks ~1e-30 of its power through FFT round-off
        assert!(s[4] / total > 0.999, "{s:?}");
    }

    #[test]
    fn identical_sets_have_no_error_and_blur_costs_high_frequencies() {
        let _rng = GlobalRng::seeded(0);
        let noise = Tensor::rand([16, 1, 32, 32], (Kind::Float, Device::Cpu));
        let same = compare_spectra(&noise, &noise).unwrap();
        assert_eq!(same.high_band_error, 0.0);
        let kernel = Tensor::full([1, 1, 3, 3], 1.0 / 9.0, (Kind::Float, Device::Cpu));
        let blurred = noise.conv2d(&kernel, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let c = compare_spectra(&noise, &blurred).unwrap();
        assert!(c.high_band_error > 3.0 * c.low_band_error, "blur removes high frequencies: {c:?}");
    }
}
