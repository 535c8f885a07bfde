//! Training a small AutoencoderKL (the embedded default's autoencoder): reconstruction + KL,
//! AdamW with linear warm-up, a progress bar, an atomic checkpoint holding config and codec,
//! a per-channel codec computed from the encoded training set, and test-split PSNR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lpl_autoencoder::{
    Autoencoder, AutoencoderKl, AutoencoderKlConfig, InputRange, LatentCodec, Reconstruction,
    ae_loss, checkpoint,
};
use lpl_data::{DatasetConfig, LabeledImages, Split, preprocess};
use lpl_torch_ext::GlobalRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{Result, TrainError, invalid, parse_toml, read_text};
use crate::progress;

/// The dataset section of an autoencoder config (see [`DatasetConfig`]).
pub type AeDataConfig = DatasetConfig;

/// The model: a named preset and/or explicit diffusers config fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeModelConfig {
    /// A preset of `AutoencoderKlConfig` (`fmnist`, `tiny`, `sd`).
    #[serde(default)]
    pub preset: Option<String>,
    /// Full config (overrides the preset).
    #[serde(default)]
    pub config: Option<AutoencoderKlConfig>,
}

impl AeModelConfig {
    /// The resolved, validated model config.
    pub fn resolve(&self) -> Result<AutoencoderKlConfig> {
        let config = match (&self.config, &self.preset) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => AutoencoderKlConfig::preset(p)?,
            (None, None) => return Err(invalid("model", "give `preset` or `config`")),
        };
        config.validate()?;
        Ok(config)
    }
}

fn default_lr() -> f64 {
    1e-3
}
fn default_kl_weight() -> f64 {
    1e-6
}
fn default_batch() -> usize {
    64
}
fn default_log_every() -> usize {
    50
}
fn default_max_nonfinite() -> usize {
    5
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeOptimConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, betas 0.9 / 0.999).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Weight of the KL term (LDM uses 1e-6).
    #[serde(default = "default_kl_weight")]
    pub kl_weight: f64,
    /// Per-pixel reconstruction error.
    #[serde(default)]
    pub reconstruction: Reconstruction,
    /// Seed of initialisation and data order.
    #[serde(default)]
    pub seed: u64,
    /// Log (and check for non-finite steps) every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Non-finite steps in a row before stopping (each is skipped, as in diffusion
    /// training: parameters and moments untouched).
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite: usize,
    /// Also write a checkpoint every this many steps (0: only at the end), as
    /// `checkpoints/autoencoder-step-NNNNNNN.safetensors` beside the final file: the final
    /// path (with the data-derived codec) exists only once training finished, so whoever
    /// finds it may take the autoencoder as done.
    #[serde(default)]
    pub checkpoint_every: usize,
}

fn default_codec_images() -> usize {
    5000
}

/// After training: the codec statistics and the test evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeEvalConfig {
    /// Training images encoded to compute the per-channel codec.
    #[serde(default = "default_codec_images")]
    pub codec_images: usize,
    /// Test images for PSNR (0: the whole split).
    #[serde(default)]
    pub test_images: usize,
}

impl Default for AeEvalConfig {
    fn default() -> Self {
        Self { codec_images: default_codec_images(), test_images: 0 }
    }
}

/// `lpl ae train --config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeTrainConfig {
    /// What to train on.
    pub data: AeDataConfig,
    /// What to train.
    pub model: AeModelConfig,
    /// How to train.
    pub train: AeOptimConfig,
    /// Codec statistics and evaluation.
    #[serde(default)]
    pub eval: AeEvalConfig,
    /// Where the checkpoint goes (`<dir>/autoencoder.safetensors`).
    pub output_dir: PathBuf,
}

impl AeTrainConfig {
    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let config: Self = parse_toml(text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(&read_text(path)?, path)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.model.resolve()?;
        let t = &self.train;
        if t.steps == 0 {
            return Err(invalid("train.steps", "must be >= 1"));
        }
        if t.batch_size == 0 {
            return Err(invalid("train.batch_size", "must be >= 1"));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(invalid("train.lr", format!("must be positive, got {}", t.lr)));
        }
        if !(t.kl_weight.is_finite() && t.kl_weight >= 0.0) {
            return Err(invalid("train.kl_weight", format!("must be >= 0, got {}", t.kl_weight)));
        }
        if t.log_every == 0 {
            return Err(invalid("train.log_every", "must be >= 1"));
        }
        Ok(())
    }
}

/// What a training run measured.
#[derive(Debug, Clone)]
pub struct AeTrainReport {
    /// Steps run.
    pub steps: usize,
    /// Training throughput, images per second (whole run).
    pub images_per_sec: f64,
    /// Mean test PSNR in dB over the original (unpadded) pixels.
    pub test_psnr: f64,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// Wall time of the training loop, seconds.
    pub train_seconds: f64,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: usize,
}

/// u8 images `(N, C, h, w)` prepared as the model sees them: padded, f32 in `[-1, 1]`.
fn prepare(images: &Tensor, pad_to: Option<i64>, codec: &LatentCodec) -> Result<Tensor> {
    let images = match pad_to {
        Some(s) => preprocess::pad_to(images, s)?,
        None => images.shallow_clone(),
    };
    Ok(codec.pixels_to_input(&preprocess::to_unit_range(&images)?))
}

/// Loads the configured dataset split at its decoded size, without `pad_to`: autoencoder
/// training pads each batch itself (`prepare`) and measures PSNR on the unpadded pixels.
pub fn load_split(data: &AeDataConfig, split: Split) -> Result<LabeledImages> {
    Ok(DatasetConfig { pad_to: None, ..data.clone() }.load(split)?)
}

/// Trains on in-memory `train` images and evaluates on `test` (both `(N, C, h, w)` u8).
pub fn train_autoencoder(
    config: &AeTrainConfig,
    train: &Tensor,
    test: &Tensor,
    device: Device,
) -> Result<AeTrainReport> {
    config.validate()?;
    let t = &config.train;
    let _rng = GlobalRng::seeded(t.seed as i64);
    let model_config = config.model.resolve()?;
    let mut ae = AutoencoderKl::new(&model_config, device, Kind::Float)?;
    let input_codec = LatentCodec::affine(InputRange::MinusOneToOne, 1.0, 0.0);
    // the optimiser of every loop: fused AdamW, decay on tensors of rank >= 2, a non-finite
    // loss or gradient skips the step on the device
    let mut opt = AdamW::new(
        ae.var_store(),
        AdamWConfig { weight_decay: t.weight_decay, ..Default::default() },
    )?;
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let (mut skipped, mut run, mut longest) = (zero(), zero(), zero());
    let n = train.size()[0];
    let batch = (t.batch_size as i64).min(n);
    let checkpoint_path = config.output_dir.join("autoencoder.safetensors");
    let bar = progress::bar(t.steps as u64, "ae train");
    let start = Instant::now();
    let mut order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
    let mut cursor = 0i64;
    for step in 0..t.steps {
        if cursor + batch > n {
            order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            cursor = 0;
        }
        let idx = order.narrow(0, cursor, batch);
        cursor += batch;
        let x = prepare(&train.index_select(0, &idx), config.data.pad_to, &input_codec)?
            .to_device(device);
        let lr = if t.warmup_steps > 0 {
            t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0)
        } else {
            t.lr
        };
        let dist = ae.encode(&x)?;
        let recon = ae.decode(&dist.sample())?;
        let loss = ae_loss(&x, &recon, &dist, t.reconstruction, t.kl_weight);
        opt.zero_grad();
        loss.total.backward();
        let norm = opt.grad_norm()?;
        let found_inf = loss
            .total
            .detach()
            .isfinite()
            .logical_and(&norm.isfinite())
            .logical_not()
            .to_kind(Kind::Float);
        opt.step_unless(lr, &found_inf)?;
        tch::no_grad(|| {
            skipped += &found_inf;
            run = (&run + 1.0) * &found_inf;
            longest = longest.maximum(&run);
        });
        if (step + 1) % t.log_every == 0 || step + 1 == t.steps {
            let longest_run = longest.double_value(&[]) as usize;
            if longest_run >= t.max_nonfinite {
                return Err(TrainError::NonFiniteRun { run: longest_run, step: step + 1 });
            }
            let rec = f64::try_from(&loss.reconstruction)?;
            let kl = f64::try_from(&loss.kl)?;
            let ips = ((step + 1) as f64 * batch as f64) / start.elapsed().as_secs_f64();
            bar.set_message(format!("rec {rec:.3} kl {kl:.1} lr {lr:.1e} {ips:.0} img/s"));
            tracing::debug!(step = step + 1, rec, kl, lr, "ae train");
        }
        if t.checkpoint_every > 0 && (step + 1) % t.checkpoint_every == 0 {
            save(&ae, &intermediate_checkpoint(&config.output_dir, step + 1), config, step + 1)?;
        }
        bar.inc(1);
    }
    bar.finish();
    let train_seconds = start.elapsed().as_secs_f64();
    let images_per_sec = (t.steps as f64 * batch as f64) / train_seconds;

    // The codec: per-channel statistics of encoded (mean) training latents.
    let codec_n = (config.eval.codec_images as i64).min(n).max(1);
    let latents = tch::no_grad(|| -> Result<Tensor> {
        let mut parts = Vec::new();
        for s in (0..codec_n).step_by(256) {
            let len = 256.min(codec_n - s);
            let x = prepare(&train.narrow(0, s, len), config.data.pad_to, &input_codec)?
                .to_device(device);
            parts.push(ae.encode(&x)?.mode().to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&parts, 0))
    })?;
    ae.set_codec(LatentCodec::from_latents(InputRange::MinusOneToOne, &latents)?);
    save(&ae, &checkpoint_path, config, t.steps)?;
    let test_psnr = evaluate_psnr(&ae, test, config.data.pad_to, config.eval.test_images, device)?;
    Ok(AeTrainReport {
        steps: t.steps,
        images_per_sec,
        test_psnr,
        checkpoint: checkpoint_path,
        train_seconds,
        skipped_steps: skipped.double_value(&[]) as usize,
    })
}

/// Where a mid-run autoencoder checkpoint of `step` goes (never the final path).
pub fn intermediate_checkpoint(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join("checkpoints").join(format!("autoencoder-step-{step:07}.safetensors"))
}

fn save(ae: &AutoencoderKl, path: &Path, config: &AeTrainConfig, step: usize) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("lpl.step".to_string(), step.to_string());
    meta.insert(
        "lpl.train_config".to_string(),
        toml::to_string(config).map_err(|e| invalid("config", e.to_string()))?,
    );
    checkpoint::save_kl(ae, path, &meta)?;
    Ok(())
}

/// Mean per-image PSNR (dB) of encode(mode) -> decode on `images` `(N, C, h, w)` u8, over
/// the original h x w pixels (padding excluded), pixel range `[0, 1]`.
pub fn evaluate_psnr(
    ae: &dyn Autoencoder,
    images: &Tensor,
    pad_to: Option<i64>,
    limit: usize,
    device: Device,
) -> Result<f64> {
    let (n, _, h, w) = images.size4()?;
    let n = if limit == 0 { n } else { (limit as i64).min(n) };
    let codec = ae.codec().clone();
    let mut sum = 0.0;
    tch::no_grad(|| -> Result<()> {
        for s in (0..n).step_by(256) {
            let len = 256.min(n - s);
            let original = preprocess::to_unit_range(&images.narrow(0, s, len))?;
            let x = prepare(&images.narrow(0, s, len), pad_to, &codec)?.to_device(device);
            let recon =
                codec.output_to_pixels(&ae.decode(&ae.encode(&x)?.mode())?).to_device(Device::Cpu);
            let (_, _, ph, pw) = recon.size4()?;
            let (top, left) = ((ph - h) / 2, (pw - w) / 2);
            let cropped = recon.narrow(2, top, h).narrow(3, left, w);
            sum += f64::try_from(lpl_metrics::psnr(&cropped, &original, 1.0).sum(Kind::Double))?;
        }
        Ok(())
    })?;
    Ok(sum / n as f64)
}
