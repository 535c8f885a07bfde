//! The run config of `lpl train`: one TOML file, validated on load, every error naming the
//! field (and, for syntax and unknown keys, the line).

use std::path::{Path, PathBuf};

use lpl_loss::LplConfig;
use lpl_schedulers::{Guidance, Parameterization, SamplerConfig, ScheduleConfig, TimeSampling};
use serde::{Deserialize, Serialize};

use crate::adamw::AdamWConfig;
use crate::ema::EmaConfig;
use crate::error::{Result, invalid, parse_toml, read_text};

/// The training data: a latent cache built by `lpl cache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The cache directory.
    pub cache: PathBuf,
    /// Use the cached horizontally flipped latents for a random half of each batch (the
    /// cache must have been built with flips: training refuses one without).
    #[serde(default)]
    pub flip: bool,
}

/// `[model]`: which denoiser, by `kind`: `dit` or `unet` with a preset (its input channels,
/// size and classes are set from the cache), or a kind registered with
/// [`crate::registry::register_denoiser`] with its own fields beside `kind`. A table without
/// `kind` whose preset starts with `dit-` or `unet-` is that kind (configs and checkpoints
/// written before `kind` existed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "toml::Table", into = "toml::Table")]
pub enum ModelConfig {
    /// A DiT preset (`dit-tiny`, `dit-b-2`, ...).
    Dit(BuiltinModel),
    /// A UNet preset (`unet-tiny`, ...).
    Unet(BuiltinModel),
    /// A registered denoiser and its own fields.
    Registered {
        /// Its registered name.
        kind: String,
        /// The rest of `[model]`, for its builder.
        fields: toml::Table,
    },
}

/// The fields of a built-in `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinModel {
    /// The preset (empty with `pretrained`, whose file gives the architecture).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preset: String,
    /// Probability of dropping labels to the null class (classifier-free guidance).
    #[serde(default)]
    pub class_dropout_prob: Option<f64>,
    /// DiT only: start from a published model instead of a preset's random weights: a
    /// diffusers DiT folder (`config.json`, or a pipeline folder's `transformer/`) or an
    /// original DiT/SiT state dict (`.pt`), read without executing pickle code. Its
    /// architecture (learned sigma included) comes from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// The attention heads of a `pretrained` file in the original layout, whose shapes do
    /// not give them (default: DiT's convention, 64 channels a head, 16 heads for XL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    /// DiT presets only: 2C output channels, the last C a learned variance (improved DDPM's
    /// "learned_range"), trained with DiT's hybrid loss (the variational bound added).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learn_sigma: bool,
}

impl ModelConfig {
    /// A DiT or UNet preset, by the preset's prefix.
    pub fn preset(name: &str) -> Self {
        let m = BuiltinModel {
            preset: name.to_string(),
            class_dropout_prob: None,
            pretrained: None,
            heads: None,
            learn_sigma: false,
        };
        if name.starts_with("unet-") { Self::Unet(m) } else { Self::Dit(m) }
    }

    /// The `kind` it is written with.
    pub fn kind(&self) -> &str {
        match self {
            Self::Dit(_) => "dit",
            Self::Unet(_) => "unet",
            Self::Registered { kind, .. } => kind,
        }
    }
}

impl TryFrom<toml::Table> for ModelConfig {
    type Error = String;

    fn try_from(mut table: toml::Table) -> std::result::Result<Self, String> {
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(other) => return Err(format!("`kind` must be a string, got {other}")),
            None => match table.get("preset").and_then(|p| p.as_str()) {
                Some(p) if p.starts_with("dit-") => "dit".to_string(),
                Some(p) if p.starts_with("unet-") => "unet".to_string(),
                _ => {
                    return Err(
                        "give `kind` (dit, unet, or a registered denoiser's name)".to_string()
                    );
                }
            },
        };
        let builtin = |t: toml::Table| -> std::result::Result<BuiltinModel, String> {
            toml::Value::Table(t).try_into().map_err(|e: toml::de::Error| e.message().to_string())
        };
        Ok(match kind.as_str() {
            "dit" => Self::Dit(builtin(table)?),
            "unet" => Self::Unet(builtin(table)?),
            _ => Self::Registered { kind, fields: table },
        })
    }
}

impl From<ModelConfig> for toml::Table {
    fn from(m: ModelConfig) -> Self {
        let kind = m.kind().to_string();
        let mut table = match m {
            ModelConfig::Dit(b) | ModelConfig::Unet(b) => {
                match toml::Value::try_from(b) {
                    Ok(toml::Value::Table(t)) => t,
                    // a struct of strings, paths, numbers and booleans is always a table
                    _ => toml::Table::new(),
                }
            }
            ModelConfig::Registered { fields, .. } => fields,
        };
        table.insert("kind".into(), kind.into());
        table
    }
}

/// A noise schedule as written in a run config: a preset name (`schedule = "dit"`; `sd15`,
/// `flow`, ...) or a full table (`[diffusion.schedule] kind = "discrete" ...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "serde_json::Value")]
pub enum ScheduleSpec {
    /// A preset of [`ScheduleConfig::preset`].
    Preset(String),
    /// Every field given.
    Config(ScheduleConfig),
}

impl TryFrom<serde_json::Value> for ScheduleSpec {
    type Error = String;

    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        match v {
            serde_json::Value::String(name) => Ok(Self::Preset(name)),
            table => serde_json::from_value(table).map(Self::Config).map_err(|e| e.to_string()),
        }
    }
}

/// Schedule, parameterisation and training-time t distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// The noise schedule: a preset name or a full table (`schedule_preset` is read as
    /// `schedule`, as configs and checkpoints before this field wrote it).
    #[serde(alias = "schedule_preset")]
    pub schedule: ScheduleSpec,
    /// What the denoiser predicts.
    pub parameterization: Parameterization,
    /// Training-time t distribution.
    #[serde(default)]
    pub time_sampling: TimeSampling,
}

impl DiffusionConfig {
    /// The schedule config (the preset's, or the table).
    pub fn schedule(&self) -> Result<ScheduleConfig> {
        match &self.schedule {
            ScheduleSpec::Config(s) => Ok(s.clone()),
            ScheduleSpec::Preset(p) => {
                ScheduleConfig::preset(p).map_err(|e| invalid("diffusion.schedule", e.to_string()))
            }
        }
    }
}

/// The loss: MSE on the parameterisation's target, optionally min-SNR weighted, plus LPL
/// or the pixel baseline. [`Default`] (and a left-out `[loss]`): plain MSE.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Min-SNR-gamma weighting of the MSE.
    pub min_snr_gamma: Option<f64>,
    /// The latent perceptual loss (absent: MSE only); `preset = "paper"` or `"diffusers"`
    /// gives every field, the others written beside it override the preset's.
    #[serde(deserialize_with = "lpl_loss::config::optional_with_preset")]
    pub lpl: Option<LplConfig>,
    /// The pixel-space baseline: MSE between the decodes of the predicted and the true
    /// clean latents, added with its weight (not together with `lpl`).
    pub pixel: Option<PixelLossConfig>,
}

/// `[loss.pixel]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelLossConfig {
    /// Weight of the pixel term in the total.
    pub weight: f64,
    /// Only the samples inside this gate (as LPL's; the term is then the mean over the kept
    /// samples). Absent: every sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<lpl_loss::LplGate>,
}

/// Optimiser and learning-rate schedule. [`Default`] (for every left-out field too): lr
/// 1e-4, no warm-up, clipping at 1, betas (0.9, 0.999), eps 1e-8, no weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Global gradient-norm clipping (`None`: off).
    pub grad_clip: Option<f64>,
    /// AdamW first-moment decay.
    pub beta1: f64,
    /// AdamW second-moment decay.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Decoupled weight decay (tensors of rank >= 2).
    pub weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            warmup_steps: 0,
            grad_clip: Some(1.0),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimConfig {
    /// The AdamW part.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

fn default_grad_accum() -> usize {
    1
}

fn default_batch() -> usize {
    64
}
fn default_log_every() -> usize {
    50
}
fn default_keep() -> usize {
    2
}
fn default_max_nonfinite() -> usize {
    5
}

/// Loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps of this run (its step counter starts at 0, or where it resumes).
    pub steps: usize,
    /// Samples per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches of `batch_size` whose gradients are accumulated into one optimiser step
    /// (the effective batch is `batch_size * grad_accum`).
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// Progress and JSONL metrics every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Checkpoints kept (the latest ones).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Non-finite losses in a row before stopping (each is skipped).
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite: usize,
    /// Seed of initialisation, data order, noise and t.
    #[serde(default)]
    pub seed: u64,
}

/// The dtype the denoiser's matmuls and convolutions run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// Plain f32 (with TF32 on CUDA when `precision.tf32`).
    #[default]
    F32,
    /// bf16 autocast: parameters, optimiser state and gradients stay f32 (master weights);
    /// softmax, norms and the losses run in f32. No loss scaling needed.
    Bf16,
}

impl ComputeDtype {
    /// The autocast dtype, if any.
    pub fn autocast(self) -> Option<lpl_torch_ext::AutocastDtype> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(lpl_torch_ext::AutocastDtype::BFloat16),
        }
    }
}

/// `[precision]`: mixed precision of the training step (fp16 is not offered: it needs loss
/// scaling, which bf16's f32 exponent range makes unnecessary). Left-out fields take
/// [`Default`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrecisionConfig {
    /// `"f32"` (default) or `"bf16"` autocast of the denoiser's forward pass (CPU or CUDA;
    /// on CPU bf16 is usually slower, use it there only to check a config).
    pub compute: ComputeDtype,
    /// TF32 tensor-core math for the remaining f32 matmuls and convolutions on CUDA (default
    /// on, as in DiT's training script; no effect on CPU).
    pub tf32: bool,
    /// Run the LPL decoder branch under the autocast dtype too. Default off: the decoder
    /// features and their statistics are computed in f32 from the f32-cast prediction.
    pub lpl_decoder_autocast: bool,
}

impl Default for PrecisionConfig {
    fn default() -> Self {
        Self { compute: ComputeDtype::F32, tf32: true, lpl_decoder_autocast: false }
    }
}

fn default_count() -> usize {
    64
}

/// How samples are drawn for grids and evaluation (from the EMA weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// The sampler.
    pub sampler: SamplerConfig,
    /// Classifier-free guidance.
    #[serde(default)]
    pub guidance: Guidance,
    /// Images per grid.
    #[serde(default = "default_count")]
    pub count: usize,
    /// Seed of the initial noise.
    #[serde(default)]
    pub seed: u64,
    /// Write a grid every this many steps (0: only at the end).
    #[serde(default)]
    pub every: usize,
}

/// `lpl train --config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Where checkpoints, metrics and grids go.
    pub output_dir: PathBuf,
    /// The autoencoder of the cache (for LPL and for decoding samples).
    pub autoencoder: PathBuf,
    /// Training data.
    pub data: DataConfig,
    /// The denoiser.
    pub model: ModelConfig,
    /// Schedule and parameterisation.
    pub diffusion: DiffusionConfig,
    /// The loss.
    #[serde(default)]
    pub loss: LossConfig,
    /// The optimiser.
    #[serde(default)]
    pub optim: OptimConfig,
    /// The loop.
    pub train: TrainConfig,
    /// The EMA.
    #[serde(default)]
    pub ema: EmaConfig,
    /// Mixed precision.
    #[serde(default)]
    pub precision: PrecisionConfig,
    /// Sampling for grids.
    #[serde(default)]
    pub sample: Option<SampleConfig>,
    /// Periodic evaluation (FD-EffNet of EMA samples against real images) and the best
    /// checkpoint by it.
    #[serde(default)]
    pub eval: Option<PeriodicEval>,
    /// Loggers besides `metrics.jsonl`.
    #[serde(default)]
    pub log: LogConfig,
    /// Multi-process training (used when launched by torchrun or Slurm).
    #[serde(default)]
    pub distributed: crate::distributed::DistributedConfig,
}

/// `[log]`: where metrics go besides `metrics.jsonl` (always written).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// TensorBoard event files in `<output_dir>/tensorboard` (scalars and sample grids).
    pub tensorboard: bool,
    /// Profile this many training steps (after one warm-up step) with libtorch's profiler
    /// and write a Chrome/Perfetto trace to `<output_dir>/profile/trace.json`
    /// (`lpl train --profile N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<usize>,
}

/// `[eval]`: every `every` steps (a multiple of `train.checkpoint_every`), `count` images
/// sampled from the EMA weights are compared with the first `count` test images of `data` by
/// FD-EffNet, precision and recall (a line `{"step", "eval": {...}}` in metrics.jsonl); the
/// checkpoint with the lowest FD so far is copied to `best.safetensors` (`best.json` says
/// which step and FD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicEval {
    /// Steps between evaluations.
    pub every: usize,
    /// Images per side.
    pub count: usize,
    /// How to sample.
    pub sampler: SamplerConfig,
    /// Classifier-free guidance.
    #[serde(default)]
    pub guidance: Guidance,
    /// Seed of the sampling noise (the same at every evaluation).
    #[serde(default)]
    pub seed: u64,
    /// Samples per sampler run. 0: all `count` at once in one process; with several ranks,
    /// `count / world` each. Ranks split the batches, so with a fixed `batch` the samples
    /// (and the metrics) are the same whatever the world size.
    #[serde(default)]
    pub batch: usize,
    /// The real images (their test split), at the size the autoencoder decodes to.
    pub data: lpl_data::DatasetConfig,
    /// EfficientNet-Lite0 weights (default: `$LPL_HOME/assets/efficientnet-lite0.pth`).
    #[serde(default)]
    pub effnet: Option<PathBuf>,
}

impl RunConfig {
    /// Parses TOML; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let config: Self = parse_toml(text, path)?;
        // the file is named in every error, the field in the message
        config.validate().map_err(|e| match e {
            e @ crate::TrainError::ConfigFile { .. } => e,
            other => crate::TrainError::ConfigFile {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(&read_text(path)?, path)
    }

    /// The config as TOML (stored in checkpoints).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| invalid("config", e.to_string()))
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        let schedule = self.diffusion.schedule()?;
        schedule.validate().map_err(|e| invalid("diffusion.schedule", e.to_string()))?;
        let s = lpl_schedulers::NoiseSchedule::new(&schedule)
            .map_err(|e| invalid("diffusion.schedule", e.to_string()))?;
        self.diffusion
            .parameterization
            .check(&s)
            .map_err(|e| invalid("diffusion.parameterization", e.to_string()))?;
        self.diffusion
            .time_sampling
            .validate()
            .map_err(|e| invalid("diffusion.time_sampling", e.to_string()))?;
        if let Some(lpl) = &self.loss.lpl {
            lpl.validate().map_err(|e| invalid("loss.lpl", e.to_string()))?;
        }
        if self.loss.lpl.is_some() && self.loss.pixel.is_some() {
            return Err(invalid("loss", "give `[loss.lpl]` or `[loss.pixel]`, not both"));
        }
        if let Some(p) = &self.loss.pixel
            && !(p.weight.is_finite() && p.weight >= 0.0)
        {
            return Err(invalid("loss.pixel.weight", format!("must be >= 0, got {}", p.weight)));
        }
        if let Some(g) = self.loss.min_snr_gamma
            && (!g.is_finite() || g <= 0.0)
        {
            return Err(invalid("loss.min_snr_gamma", format!("must be positive, got {g}")));
        }
        if !self.optim.lr.is_finite() || self.optim.lr <= 0.0 {
            return Err(invalid("optim.lr", format!("must be positive, got {}", self.optim.lr)));
        }
        self.optim.adamw().validate()?;
        self.distributed.validate()?;
        if !(0.0..1.0).contains(&self.ema.decay) {
            return Err(invalid("ema.decay", format!("must be in [0, 1), got {}", self.ema.decay)));
        }
        if self.train.steps == 0 {
            return Err(invalid("train.steps", "must be >= 1"));
        }
        if self.train.batch_size == 0 {
            return Err(invalid("train.batch_size", "must be >= 1"));
        }
        if self.train.grad_accum == 0 {
            return Err(invalid("train.grad_accum", "must be >= 1"));
        }
        if self.train.log_every == 0 {
            return Err(invalid("train.log_every", "must be >= 1"));
        }
        if let Some(e) = &self.eval {
            let ckpt = self.train.checkpoint_every;
            if e.every == 0 || (ckpt > 0 && !e.every.is_multiple_of(ckpt)) || ckpt == 0 {
                return Err(invalid(
                    "eval.every",
                    format!("must be a positive multiple of train.checkpoint_every ({ckpt})"),
                ));
            }
            if e.count < 4 {
                return Err(invalid("eval.count", "needs at least 4 images (k = 3 neighbours)"));
            }
            e.data.validate()?;
        }
        crate::registry::check(&self.model)?;
        if let Some(sample) = &self.sample {
            sample.sampler.validate(&s).map_err(|e| invalid("sample.sampler", e.to_string()))?;
            sample.guidance.validate().map_err(|e| invalid("sample.guidance", e.to_string()))?;
        }
        Ok(())
    }
}
