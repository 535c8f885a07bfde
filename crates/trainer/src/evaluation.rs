//! Evaluation of a trained run: sample from its EMA weights, decode, and compare with real
//! images by the Frechet distance in EfficientNet-Lite0 features ("FD-EffNet").

use std::path::{Path, PathBuf};

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_data::LatentCache;
use lpl_denoiser::Denoiser;
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::{Device, Kind, Tensor};

use crate::diffusion_training::{build_model, open_autoencoder};
use crate::error::{Result, TrainError, invalid};
use crate::run_checkpoint;
use crate::run_config::{RunConfig, SampleConfig};
use crate::sampling::SampleRequest;

/// A run's latest (or a given) checkpoint, loaded for sampling: EMA weights in the model;
/// or a published model with the autoencoder that decodes its latents
/// ([`Self::open_pretrained`]).
pub struct TrainedRun {
    /// The checkpoint (or published model) read.
    pub checkpoint: PathBuf,
    /// Its step (0 for a published model).
    pub step: usize,
    /// The run config (`None` for a published model).
    pub config: Option<RunConfig>,
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
            config: Some(config),
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

/// How to sample a published model: what its file does not say.
#[derive(Debug, Clone)]
pub struct PretrainedOptions {
    /// The autoencoder that decodes its latents (a diffusers folder, e.g. DiT's
    /// `sd-vae-ft-ema`; its `scaling_factor` is the latent codec).
    pub autoencoder: PathBuf,
    /// The attention heads of an original-layout file (default: DiT's convention).
    pub heads: Option<i64>,
    /// The noise schedule it was trained with (DiT: `dit`, linear 1e-4 to 0.02 over 1000).
    pub schedule: String,
    /// What it predicts (DiT: `eps`).
    pub parameterization: Parameterization,
}

impl PretrainedOptions {
    /// DiT's training setup, decoded by `autoencoder`.
    pub fn dit(autoencoder: PathBuf) -> Self {
        Self {
            autoencoder,
            heads: None,
            schedule: "dit".to_string(),
            parameterization: Parameterization::Eps,
        }
    }
}

/// Whether `path` is a published denoiser rather than a run: a diffusers DiT folder
/// (`config.json` without lpl's checkpoints, or a pipeline's `transformer/`) or an
/// original-layout `.pt`/`.pth`/`.bin` file.
pub fn is_pretrained(path: &Path) -> bool {
    if path.is_dir() {
        (path.join("config.json").is_file() || path.join("transformer/config.json").is_file())
            && run_checkpoint::list_checkpoints(path).is_empty()
    } else {
        path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["pt", "pth", "bin"].contains(&e))
    }
}

impl TrainedRun {
    /// A published DiT (see [`lpl_denoiser::Dit::from_pretrained`]) with the autoencoder,
    /// schedule and parameterisation of `options`; latents of the model's own size.
    pub fn open_pretrained(
        path: &Path,
        options: &PretrainedOptions,
        device: Device,
    ) -> Result<Self> {
        let dit = lpl_denoiser::Dit::from_pretrained(path, options.heads, device, Kind::Float)?;
        let (c, size) = (dit.config().in_channels, dit.config().sample_size);
        let classes = dit.config().num_embeds_ada_norm;
        let mut ae = lpl_autoencoder::open(&options.autoencoder, device, Kind::Float)?;
        ae.set_requires_grad(false);
        if ae.latent_channels() != c {
            return Err(invalid(
                "ae",
                format!(
                    "{} has {}-channel latents, {} takes {c}",
                    options.autoencoder.display(),
                    ae.latent_channels(),
                    path.display()
                ),
            ));
        }
        let codec = ae.codec().clone();
        let schedule = NoiseSchedule::preset(&options.schedule)?.to_device(device);
        options.parameterization.check(&schedule)?;
        Ok(Self {
            checkpoint: path.to_path_buf(),
            step: 0,
            config: None,
            model: Box::new(dit),
            ae,
            codec,
            schedule,
            parameterization: options.parameterization,
            latent_shape: [c, size, size],
            num_classes: classes,
        })
    }

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
