//! Evaluation of a trained run: sample from its EMA weights, decode, and compare with real
//! images by the Frechet distance in EfficientNet-Lite0 features ("FD-EffNet").

use std::path::{Path, PathBuf};

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_data::LatentCache;
use lpl_denoiser::Denoiser;
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::{Device, Tensor};

use crate::diffusion_training::{build_model, open_autoencoder};
use crate::error::{Result, TrainError};
use crate::run_checkpoint;
use crate::run_config::{RunConfig, SampleConfig};
use crate::sampling::SampleRequest;

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

impl TrainedRun {
    /// A [`SampleRequest`] for `sample` from the EMA weights (labels cycling over the
    /// classes, so a grid row shows the classes in order).
    pub fn request(&self, sample: &SampleConfig, device: Device) -> SampleRequest<'_> {
        SampleRequest::new(
            self.model.as_ref(),
            &self.schedule,
            self.parameterization,
            self.latent_shape,
            sample,
            device,
        )
        .cycling(self.num_classes)
    }

    /// `sample.count` images `(N, C, H, W)` in `[0, 1]` on the CPU from the EMA weights.
    pub fn sample_images(&self, sample: &SampleConfig, device: Device) -> Result<Tensor> {
        self.request(sample, device).images(self.ae.as_ref(), &self.codec)
    }
}

/// Metrics of generated against real images (FD in a feature network, k = 3 precision,
/// recall, density, coverage, spectrum band errors).
pub type SampleMetrics = lpl_metrics::ImageMetrics;

/// The default location of the converted EfficientNet-Lite0 weights.
pub fn default_effnet_weights() -> Option<PathBuf> {
    let home = std::env::var_os("LPL_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lpl")))?;
    Some(home.join("assets/efficientnet-lite0.pth"))
}
