//! Evaluation of a trained run: sample from its EMA weights, decode, and compare with real
//! images by the Frechet distance in EfficientNet-Lite0 features ("FD-EffNet").

use std::path::{Path, PathBuf};

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_data::LatentCache;
use lpl_denoiser::Denoiser;
use lpl_metrics::effnet::EfficientNetLite0;
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::{Device, Tensor};

use crate::diffusion_training::{build_model, open_autoencoder};
use crate::error::{Result, TrainError};
use crate::run_checkpoint;
use crate::run_config::RunConfig;

/// A run's latest (or a given) checkpoint, loaded for sampling: EMA weights in the model.
pub struct TrainedRun {
    /// The checkpoint read.
    pub checkpoint: PathBuf,
    /// Its step.
    pub step: usize,
    /// The run config.
    pub config: RunConfig,
    /// The denoiser with the EMA weights.
    pub model: Box<dyn Denoiser>,
    /// The autoencoder (frozen).
    pub ae: Box<dyn Autoencoder>,
    /// The latent codec.
    pub codec: LatentCodec,
    /// The schedule.
    pub schedule: NoiseSchedule,
    /// The parameterisation.
    pub parameterization: Parameterization,
    /// `[C, h, w]` of the latents.
    pub latent_shape: [i64; 3],
    /// Classes, if conditional.
    pub num_classes: Option<i64>,
}

impl TrainedRun {
    /// Opens a run directory (latest checkpoint) or a checkpoint file.
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let checkpoint = if path.is_dir() {
            run_checkpoint::list_checkpoints(path).last().cloned().ok_or_else(|| {
                TrainError::ConfigFile {
                    path: path.to_path_buf(),
                    message: "no checkpoint in this run directory".to_string(),
                }
            })?
        } else {
            path.to_path_buf()
        };
        let (state, tensors) = run_checkpoint::load(&checkpoint)?;
        let config = RunConfig::from_toml(&state.config_toml, &checkpoint)?;
        let cache = LatentCache::open(&config.data.cache)?;
        let ae = open_autoencoder(&config, device)?;
        let codec = LatentCodec::from_json(&state.codec_json)?;
        let (latent_shape, num_classes) = (cache.manifest.latent_shape, cache.manifest.num_classes);
        let model = build_model(&config, latent_shape, num_classes, device)?;
        lpl_tensor_io::load_into(
            model.var_store(),
            &run_checkpoint::strip_prefix(&tensors, "ema."),
            &checkpoint,
        )?;
        let schedule = NoiseSchedule::new(&config.diffusion.schedule()?)?.to_device(device);
        let parameterization = config.diffusion.parameterization;
        Ok(Self {
            checkpoint,
            step: state.step,
            config,
            model,
            ae,
            codec,
            schedule,
            parameterization,
            latent_shape,
            num_classes,
        })
    }
}

/// Metrics of generated against real images: in EfficientNet-Lite0 features, and of their
/// power spectra.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleMetrics {
    /// Frechet distance ("FD-EffNet"; lower is better).
    pub fd_effnet: f64,
    /// k = 3 precision (fidelity).
    pub precision: f64,
    /// k = 3 recall (diversity).
    pub recall: f64,
    /// k = 3 density.
    pub density: f64,
    /// k = 3 coverage.
    pub coverage: f64,
    /// Mean |log10 power| error of the radial spectrum in the low band.
    pub spectrum_low: f64,
    /// The same in the high band (radii above half the maximum).
    pub spectrum_high: f64,
}

/// FD-EffNet, precision/recall/density/coverage (k = 3) and the spectrum band errors of `fake`
/// against `real`, both pixel images in `[0, 1]` of the same size.
pub fn sample_metrics(
    net: &EfficientNetLite0,
    real: &Tensor,
    fake: &Tensor,
) -> Result<(SampleMetrics, lpl_metrics::spectrum::SpectrumComparison)> {
    let (m, spectrum) = lpl_metrics::compare_images(net, real, fake)
        .map_err(|e| TrainError::Torch(e.to_string()))?;
    Ok((
        SampleMetrics {
            fd_effnet: m.fd,
            precision: m.precision,
            recall: m.recall,
            density: m.density,
            coverage: m.coverage,
            spectrum_low: m.spectrum_low,
            spectrum_high: m.spectrum_high,
        },
        spectrum,
    ))
}

/// The default location of the converted EfficientNet-Lite0 weights.
pub fn default_effnet_weights() -> Option<PathBuf> {
    let home = std::env::var_os("LPL_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lpl")))?;
    Some(home.join("assets/efficientnet-lite0.pth"))
}
