//! The MSE vs MSE + LPL ablation (the paper's central experiment) on the embedded default:
//! train (or reuse) the autoencoder and the latent cache, pre-train with MSE once per
//! parameterisation, fork each pre-trained run into MSE-only and MSE + LPL continuations of
//! equal length with identical data order and seeds, evaluate FD-EffNet from the EMA weights
//! with a fixed sampler and seeds, and write the report ([`crate::report`]: `report.md`,
//! `report.html`, `results.json`, `results.csv`, spectrum and loss-curve plots).
//!
//! Besides MSE, each pre-trained run is continued with every LPL variant of the config (by
//! default one, the `[lpl]` table itself), so sweeps over the paper's ablation axes (depth,
//! tau, normalisation, weight, mask) are configs: `configs/ablate-depth.toml`, ...
//!
//! Every stage is skipped when its output exists, so an interrupted ablation resumes where
//! it stopped (a half-trained run resumes from its latest checkpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_data::{ImageSource, LatentCache, Split};
use lpl_metrics::RealReference;
use lpl_schedulers::{Parameterization, SamplerConfig, SamplerKind};
use lpl_trainer::ae_training::{AeTrainConfig, load_split, train_autoencoder};
use lpl_trainer::cache_building::{CacheOptions, build_cache_from};
use lpl_trainer::diffusion_training::{Start, train};
use lpl_trainer::distributed::Launch;
use lpl_trainer::evaluation::{SampleMetrics, TrainedRun, default_effnet_weights};
use lpl_trainer::run_config::{RunConfig, SampleConfig, ScheduleSpec};
use lpl_trainer::{progress, run_checkpoint};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use lpl_loss::{LatentPerceptualLoss, LplConfig};
use lpl_trainer::calibration::{Calibration, calibrate};

use crate::config::AblationConfig;
use crate::control::{Control, ControlSet};
use crate::error::{AblationError, Result, invalid};
use crate::provenance::{self, Provenance};
use crate::report;

/// One evaluated continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    /// eps, v or flow.
    pub parameterization: String,
    /// The continuation's seed.
    pub seed: u64,
    /// `mse` or the LPL variant's name.
    pub arm: String,
    /// FD-EffNet, precision, recall, density, coverage, spectrum errors against the test split.
    pub metrics: SampleMetrics,
    /// Radially averaged power spectrum of the generated images (radius 0..=R).
    pub spectrum: Vec<f64>,
    /// The same for the real images.
    pub real_spectrum: Vec<f64>,
    /// The run directory.
    pub run: PathBuf,
    /// How this arm was evaluated (`None`: an `eval.json` written before provenance was
    /// recorded).
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// The positive control: held-out LPL and MSE of the EMA model ([`crate::control`]).
    #[serde(default)]
    pub control: Option<Control>,
    /// The weight of the arm's added term (LPL or pixel), calibrated or as configured.
    #[serde(default)]
    pub weight: Option<f64>,
}

/// The autoencoder's ceiling: its reconstructions of the real evaluation images compared
/// with them as the generated images are (no denoiser can do better than its decoder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceiling {
    /// Images compared.
    pub count: usize,
    /// The autoencoder's fingerprint (a kept `ceiling.json` of another one is redone).
    #[serde(default)]
    pub autoencoder: String,
    /// FD-EffNet, precision, recall, ... of the reconstructions against the real images.
    pub metrics: SampleMetrics,
    /// Radially averaged power spectrum of the reconstructions.
    pub spectrum: Vec<f64>,
    /// The same for the real images.
    pub real_spectrum: Vec<f64>,
}

/// What `eval.json` of a run holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EvalRecord {
    count: usize,
    steps: usize,
    guidance: f64,
    seed: u64,
    metrics: SampleMetrics,
    spectrum: Vec<f64>,
    real_spectrum: Vec<f64>,
    /// The step of the checkpoint evaluated (`None` in records written before it was kept:
    /// they are evaluated again).
    #[serde(default)]
    checkpoint_step: Option<usize>,
    #[serde(default)]
    provenance: Option<Provenance>,
    /// The positive control (`None` in records written before it existed: computed then).
    #[serde(default)]
    control: Option<Control>,
}

/// SHA-256 of everything an ablation reads: the dataset's files, the autoencoder (trained
/// here or given), the latent cache's manifest, the base run config, the autoencoder
/// config, and the EfficientNet-Lite0 weights when present.
fn input_digests(
    config: &AblationConfig,
    data: &lpl_data::DatasetConfig,
    ae_path: &Path,
    cache_dir: &Path,
) -> Result<BTreeMap<String, String>> {
    let files = data.files()?;
    let mut inputs = BTreeMap::from([
        (format!("dataset ({}, {} files)", data.dataset, files.len()), {
            provenance::sha256_files(data.dir.as_deref(), &files)?
        }),
        ("autoencoder".to_string(), provenance::sha256_path(ae_path)?),
        ("cache manifest".to_string(), provenance::sha256_file(&cache_dir.join("manifest.json"))?),
        ("run_config".to_string(), provenance::sha256_file(&config.run_config)?),
    ]);
    if let Some(path) = &config.autoencoder_config {
        inputs.insert("autoencoder_config".to_string(), provenance::sha256_file(path)?);
    }
    if let Some(weights) = default_effnet_weights().filter(|p| p.is_file()) {
        inputs.insert("efficientnet-lite0".to_string(), provenance::sha256_file(&weights)?);
    }
    Ok(inputs)
}

fn done(run: &Path, steps: usize) -> bool {
    run_checkpoint::list_checkpoints(run)
        .last()
        .is_some_and(|c| *c == run_checkpoint::checkpoint_path(run, steps))
}

/// Trains the run unless it is done; resumes it if it has checkpoints. A run directory whose
/// checkpoints come from another config (an edited variant, seed or schedule) is an error
/// naming the changed fields: redoing it silently would lose it, reusing it would report a
/// run that was not made.
fn run_or_resume(config: &RunConfig, init: Option<&Path>, device: Device) -> Result<()> {
    let world = Launch::from_env()?.map_or(1, |l| l.world_size);
    run_checkpoint::check_same_run(&config.output_dir, config, world)?;
    if done(&config.output_dir, config.train.steps) {
        return Ok(());
    }
    let start = if run_checkpoint::list_checkpoints(&config.output_dir).is_empty() {
        init.map_or(Start::Fresh, |p| Start::InitFrom(p.to_path_buf()))
    } else {
        Start::Resume
    };
    Ok(train(config, start, device).map(|_| ())?)
}

/// The autoencoder, the dataset and the latent cache an ablation trains on.
struct Inputs {
    ae_path: PathBuf,
    data: lpl_data::DatasetConfig,
    cache_dir: PathBuf,
}

/// Stages 1 and 2: the autoencoder (trained here unless done, or pretrained) and the
/// latent cache (given, or built here shard by shard unless it matches).
fn prepare_inputs(config: &AblationConfig, device: Device) -> Result<Inputs> {
    let out = &config.output_dir;
    let ae_config = match &config.autoencoder_config {
        Some(path) => {
            let mut c = AeTrainConfig::from_file(path)?;
            c.output_dir = out.join("ae");
            c.train.steps = config.autoencoder_steps;
            if let Some(n) = config.train_images {
                // a small ablation also evaluates the autoencoder on fewer images
                c.eval.test_images = c.eval.test_images.clamp(1, n.clamp(1, 500));
                c.eval.codec_images = c.eval.codec_images.min(n.max(1));
            }
            Some(c)
        }
        None => None,
    };
    let (ae_path, data) = match (&ae_config, &config.autoencoder, &config.data) {
        (Some(c), _, _) => (c.output_dir.join("autoencoder.safetensors"), c.data.clone()),
        (None, Some(p), Some(d)) => (p.clone(), d.clone()),
        _ => return Err(invalid("autoencoder", "no autoencoder configured")),
    };
    // the training images: all of the source, or its first `train_images` (in memory)
    let full = data.open(Split::Train)?;
    let subset = match config.train_images {
        Some(n) => Some(full.read(0, (n as i64).min(full.len()))?),
        None => None,
    };
    let train_source: &dyn ImageSource = match &subset {
        Some(s) => s,
        None => full.as_ref(),
    };
    if let Some(c) = ae_config.as_ref().filter(|_| !ae_path.is_file()) {
        tracing::info!("training the autoencoder ({} steps)", config.autoencoder_steps);
        let train = train_source.read(0, train_source.len())?; // padded; prepare() is a no-op on it
        let test = load_split(&data, Split::Test)?; // unpadded: PSNR on the original pixels
        let report = train_autoencoder(c, &train.images, &test.images, device)?;
        tracing::info!("autoencoder test PSNR {:.2} dB", report.test_psnr);
    }
    let mut ae = lpl_autoencoder::open(&ae_path, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let fingerprint = ae.fingerprint()?;
    let cache_dir = match &config.cache {
        Some(dir) => {
            LatentCache::open(dir)?.check_autoencoder(&fingerprint, ae.codec())?;
            dir.clone()
        }
        None => {
            let dir = out.join("cache");
            let fresh = LatentCache::open(&dir).is_ok_and(|c| {
                c.check_autoencoder(&fingerprint, ae.codec()).is_ok()
                    && c.len() <= train_source.len()
                    && c.len() >= train_source.len() * 99 / 100
            });
            if !fresh {
                let options = CacheOptions {
                    pad_to: None, // the source pads (DatasetConfig::pad_to)
                    shard_size: 8192,
                    batch: 256,
                    flip: false,
                    num_classes: Some(train_source.num_classes()),
                    autoencoder_name: ae_path.display().to_string(),
                };
                build_cache_from(ae.as_ref(), train_source, &options, &dir, device)?;
            }
            dir
        }
    };
    Ok(Inputs { ae_path, data, cache_dir })
}

/// The MSE pre-training run of `param`.
fn pretrain_config(
    config: &AblationConfig,
    base: &RunConfig,
    inputs: &Inputs,
    param: Parameterization,
) -> RunConfig {
    let mut pre = base.clone();
    pre.output_dir = config.output_dir.join(param.to_string()).join("pretrain");
    pre.autoencoder = inputs.ae_path.clone();
    pre.data.cache = inputs.cache_dir.clone();
    pre.diffusion.parameterization = param;
    if param == Parameterization::Flow {
        pre.diffusion.schedule = ScheduleSpec::Preset("flow".to_string());
    }
    pre.loss.lpl = None;
    pre.loss.pixel = None;
    pre.train.steps = config.pretrain_steps;
    pre.train.log_every = pre.train.log_every.min(config.pretrain_steps / 20).max(1);
    pre.sample = None;
    pre
}

/// The continuation of `pre` with `seed` in `arm` (`mse`, an LPL variant's name, or
/// `pixel`), its added term at `weight` (`None`: as configured).
fn continuation_config(
    config: &AblationConfig,
    base: &RunConfig,
    pre: &RunConfig,
    seed: u64,
    arm: &str,
    weight: Option<f64>,
) -> RunConfig {
    let mut run = pre.clone();
    let param = pre.diffusion.parameterization.to_string();
    run.output_dir = config.output_dir.join(param).join(format!("seed{seed}")).join(arm);
    run.train.steps = config.continuation_steps;
    run.train.log_every = base.train.log_every.min(config.continuation_steps / 10).max(1);
    run.train.seed = seed;
    run.loss.lpl = config.variants.iter().find(|v| v.name == arm).map(|v| v.apply(&config.lpl));
    if let (Some(l), Some(w)) = (run.loss.lpl.as_mut(), weight) {
        l.weight = w;
    }
    if arm == "pixel" {
        // the first LPL arm's gate and weight
        let first = config.variants.first().map(|v| v.apply(&config.lpl));
        let fixed = first.as_ref().map_or(1.0, |l| l.weight);
        run.loss.pixel = Some(lpl_trainer::run_config::PixelLossConfig {
            weight: weight.unwrap_or(fixed),
            gate: first.map(|l| l.gate),
        });
    }
    run
}

/// The share the weight of `arm` is calibrated to (the pixel arm: the first LPL arm's).
fn arm_share(config: &AblationConfig, arm: &str) -> Option<f64> {
    let variant = if arm == "pixel" {
        config.variants.first()
    } else {
        config.variants.iter().find(|v| v.name == arm)
    };
    variant.and_then(|v| v.share())
}

/// The weight of `arm`'s added term for the continuations of `pre`: calibrated to its share
/// at the fork `pre_ckpt` once per parameterisation and arm (kept in
/// `<param>/calibration-<arm>.json`), or `None` (as configured).
fn arm_weight(
    config: &AblationConfig,
    base: &RunConfig,
    pre: &RunConfig,
    arm: &str,
    pre_ckpt: &Path,
    device: Device,
) -> Result<Option<Calibration>> {
    let Some(share) = arm_share(config, arm) else { return Ok(None) };
    let seed = config.seeds.first().copied().unwrap_or(0);
    let file = pre
        .output_dir
        .parent()
        .unwrap_or(&config.output_dir)
        .join(format!("calibration-{arm}.json"));
    let probe = continuation_config(config, base, pre, seed, arm, Some(1.0));
    // reused only for the same loss (at weight 1) and fork
    let key = serde_json::json!({"loss": probe.loss, "checkpoint": pre_ckpt});
    if let Some(c) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str::<CalibrationRecord>(&t).ok())
        .filter(|r| r.calibration.share == share && r.key == key)
    {
        return Ok(Some(c.calibration));
    }
    let c = calibrate(&probe, pre_ckpt, share, device)?;
    tracing::info!(
        "{arm}: weight {:.4e} gives a share of {share} (MSE {:.4}, term at weight 1 {:.4e})",
        c.weight,
        c.mse,
        c.term
    );
    let record = CalibrationRecord { calibration: c, key };
    let text = serde_json::to_string_pretty(&record)
        .map_err(|e| AblationError::Io { path: file.clone(), source: e.into() })?;
    lpl_tensor_io::write_atomically(&file, text.as_bytes())?;
    Ok(Some(c))
}

/// A calibration as kept on disk, with what it was made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CalibrationRecord {
    /// The weight and the measured terms.
    #[serde(flatten)]
    calibration: Calibration,
    /// The loss config (at weight 1) and the checkpoint it was measured with.
    key: serde_json::Value,
}

/// Evaluates continuations (or reuses their `eval.json`): the feature network and the real
/// images' statistics are made on first need and shared by every arm.
struct ArmEvaluator<'c> {
    config: &'c AblationConfig,
    real: tch::Tensor,
    real_labels: tch::Tensor,
    reference: Option<(lpl_metrics::EfficientNetLite0, RealReference)>,
    provenance: Provenance,
    /// The positive control's held-out sets per parameterisation and gate (schedules and
    /// gates differ).
    controls: BTreeMap<String, ControlSet>,
}

impl<'c> ArmEvaluator<'c> {
    fn new(config: &'c AblationConfig, inputs: &Inputs, provenance: Provenance) -> Result<Self> {
        let test = inputs.data.open(Split::Test)?;
        let read = test.read(0, (config.eval_count as i64).min(test.len()))?;
        let real = lpl_data::preprocess::to_unit_range(&read.images)?;
        Ok(Self {
            config,
            real,
            real_labels: read.labels,
            reference: None,
            provenance,
            controls: BTreeMap::new(),
        })
    }

    /// The feature network and the real images' reference, made on first need.
    fn reference(
        &mut self,
        device: Device,
    ) -> Result<&(lpl_metrics::EfficientNetLite0, RealReference)> {
        if self.reference.is_none() {
            let weights = default_effnet_weights().filter(|p| p.is_file()).ok_or_else(|| {
                invalid("eval", "EfficientNet-Lite0 weights missing: run `cargo xtask ablate` or `cargo xtask test`, which convert them")
            })?;
            let net = lpl_metrics::EfficientNetLite0::from_file(&weights, device)?;
            let r = RealReference::new(&net, &self.real)?;
            self.reference = Some((net, r));
        }
        self.reference.as_ref().ok_or_else(|| invalid("eval", "no reference"))
    }

    /// The autoencoder's ceiling (kept in `ceiling.json` for this image count).
    fn ceiling(&mut self, ae_path: &Path, device: Device) -> Result<Ceiling> {
        let file = self.config.output_dir.join("ceiling.json");
        let mut ae = lpl_autoencoder::open(ae_path, device, Kind::Float)?;
        ae.set_requires_grad(false);
        let fingerprint = ae.fingerprint()?;
        if let Some(c) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Ceiling>(&t).ok())
            .filter(|c| c.count == self.config.eval_count && c.autoencoder == fingerprint)
        {
            return Ok(c);
        }
        let codec = ae.codec().clone();
        let recon = tch::no_grad(|| -> Result<tch::Tensor> {
            let mut parts = Vec::new();
            for chunk in self.real.split(64, 0) {
                let z = ae.encode(&codec.pixels_to_input(&chunk).to_device(device))?.mode();
                parts.push(codec.output_to_pixels(&ae.decode(&z)?).to_device(tch::Device::Cpu));
            }
            Ok(tch::Tensor::f_cat(&parts, 0)?)
        })?;
        let (net, real_ref) = self.reference(device)?;
        let (metrics, spectrum) = real_ref.compare(net, &recon)?;
        let c = Ceiling {
            count: self.config.eval_count,
            autoencoder: fingerprint,
            metrics,
            spectrum: spectrum.fake,
            real_spectrum: spectrum.real,
        };
        let text = serde_json::to_string_pretty(&c)
            .map_err(|e| AblationError::Io { path: file.clone(), source: e.into() })?;
        lpl_tensor_io::write_atomically(&file, text.as_bytes())?;
        Ok(c)
    }

    /// The positive control of the trained run (its EMA weights): the configured LPL, and
    /// each variant's own where it changes the measure.
    fn control(&mut self, trained: &TrainedRun, device: Device) -> Result<Control> {
        let config = self.config;
        let mut control = self.control_with(trained, &config.lpl, device)?;
        for v in config.variants.iter().filter(|v| v.changes_the_measure()) {
            let own = self.control_with(trained, &v.apply(&config.lpl), device)?;
            control.by_variant.insert(v.name.clone(), own.lpl);
        }
        Ok(control)
    }

    /// The control values of `trained` under the LPL `lpl`, on the held-out set inside
    /// its gate (one set per parameterisation and gate, made on first need).
    fn control_with(
        &mut self,
        trained: &TrainedRun,
        lpl: &LplConfig,
        device: Device,
    ) -> Result<Control> {
        let key = format!("{} {:?}", trained.parameterization, lpl.gate);
        if !self.controls.contains_key(&key) {
            let loss =
                LatentPerceptualLoss::new(trained.ae.as_ref(), trained.codec.clone(), lpl.clone())?;
            let set = ControlSet::new(
                trained.ae.as_ref(),
                &trained.codec,
                &self.real,
                Some(&self.real_labels),
                &loss,
                &trained.schedule,
                device,
            )?;
            self.controls.insert(key.clone(), set);
        }
        let set = self.controls.get(&key).ok_or_else(|| invalid("eval", "no control set"))?;
        set.evaluate(trained, lpl, device)
    }

    /// Whether `control` lacks a value this config asks for (absent, or without a
    /// variant's own measure: records written before the variant existed).
    fn control_incomplete(&self, control: Option<&Control>) -> bool {
        control.is_none_or(|c| {
            self.config
                .variants
                .iter()
                .any(|v| v.changes_the_measure() && !c.by_variant.contains_key(&v.name))
        })
    }

    /// The run's `eval.json` when it was made with these sampling settings from the final
    /// checkpoint (a continuation extended by a larger `continuation_steps` is evaluated
    /// again), else a new evaluation written there.
    fn evaluate(&mut self, run: &RunConfig, device: Device) -> Result<EvalRecord> {
        let c = self.config;
        let key = (c.eval_count, c.eval_steps, c.eval_guidance, c.eval_seed);
        let eval_file = run.output_dir.join("eval.json");
        let cached = std::fs::read_to_string(&eval_file)
            .ok()
            .and_then(|t| serde_json::from_str::<EvalRecord>(&t).ok())
            .filter(|r| {
                (r.count, r.steps, r.guidance, r.seed) == key
                    && r.checkpoint_step == Some(c.continuation_steps)
            });
        if let Some(mut record) = cached {
            if self.control_incomplete(record.control.as_ref()) {
                // a record from before the positive control or before a variant that
                // changes the measure: complete it, keep the rest
                let trained = TrainedRun::open(&run.output_dir, device)?;
                record.control = Some(self.control(&trained, device)?);
                write_record(&eval_file, &record)?;
            }
            return Ok(record);
        }
        let trained = TrainedRun::open(&run.output_dir, device)?;
        let control = self.control(&trained, device)?;
        let (net, real_ref) = self.reference(device)?;
        let flow = run.diffusion.parameterization == Parameterization::Flow;
        let sample = SampleConfig {
            sampler: SamplerConfig::new(
                if flow { SamplerKind::FlowEuler } else { SamplerKind::Ddim },
                c.eval_steps,
            ),
            guidance: lpl_schedulers::Guidance::new(c.eval_guidance),
            count: c.eval_count,
            seed: c.eval_seed,
            every: 0,
        };
        let fake = trained.sample_images(&sample, device)?;
        let n = fake.size()[0];
        let grid = lpl_metrics::grid::make_grid(
            &fake.narrow(0, 0, n.min(100)),
            trained.num_classes.unwrap_or(10),
            2,
        );
        lpl_data::folder::write_png(&grid, &run.output_dir.join("samples.png"))?;
        let (metrics, spectrum) = real_ref.compare(net, &fake)?;
        let record = EvalRecord {
            count: c.eval_count,
            steps: c.eval_steps,
            guidance: c.eval_guidance,
            seed: c.eval_seed,
            metrics,
            spectrum: spectrum.fake,
            real_spectrum: spectrum.real,
            checkpoint_step: Some(c.continuation_steps),
            provenance: Some(self.provenance.clone()),
            control: Some(control),
        };
        write_record(&eval_file, &record)?;
        Ok(record)
    }
}

fn write_record(path: &Path, record: &EvalRecord) -> Result<()> {
    let text = serde_json::to_string_pretty(record)
        .map_err(|e| AblationError::Io { path: path.to_path_buf(), source: e.into() })?;
    Ok(lpl_tensor_io::write_atomically(path, text.as_bytes())?)
}

/// One arm of an ablation: the continuation `arm` (`mse`, a variant, `pixel`) of seed `seed`
/// from `parameterization`'s pre-trained model. Written `eps:0:lpl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmKey {
    /// The parameterisation.
    pub parameterization: Parameterization,
    /// The continuation's seed.
    pub seed: u64,
    /// The arm's name.
    pub arm: String,
}

impl std::fmt::Display for ArmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.parameterization, self.seed, self.arm)
    }
}

impl std::str::FromStr for ArmKey {
    type Err = AblationError;

    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || invalid("arm", format!("`{s}`: expected PARAMETERIZATION:SEED:ARM, e.g. eps:0:lpl"));
        let mut parts = s.splitn(3, ':');
        let (Some(p), Some(seed), Some(arm)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        Ok(Self {
            parameterization: serde_json::from_value(serde_json::Value::String(p.to_string()))
                .map_err(|_| bad())?,
            seed: seed.parse().map_err(|_| bad())?,
            arm: arm.to_string(),
        })
    }
}

/// Everything an ablation does before its arms fork, done or resumed: the autoencoder, the
/// latent cache, the autoencoder's ceiling, each parameterisation's pre-training and the
/// calibrated weights. Returns every arm, in the order [`run_ablation`] runs them; each can
/// then run on its own ([`run_arm`]), in parallel processes or on several devices.
pub fn prepare_arms(config: &AblationConfig, device: Device) -> Result<Vec<ArmKey>> {
    let out = &config.output_dir;
    std::fs::create_dir_all(out).map_err(|e| AblationError::Io { path: out.clone(), source: e })?;
    let inputs = prepare_inputs(config, device)?;
    let digests = input_digests(config, &inputs.data, &inputs.ae_path, &inputs.cache_dir)?;
    let mut evaluator = ArmEvaluator::new(config, &inputs, Provenance::current(device, digests))?;
    evaluator.ceiling(&inputs.ae_path, device)?;
    let base = RunConfig::from_file(&config.run_config)?;
    let mut keys = Vec::new();
    for &param in &config.parameterizations {
        let pre = pretrain_config(config, &base, &inputs, param);
        run_or_resume(&pre, None, device)?;
        let pre_ckpt = run_checkpoint::checkpoint_path(&pre.output_dir, config.pretrain_steps);
        for arm in &config.arms() {
            arm_weight(config, &base, &pre, arm, &pre_ckpt, device)?;
        }
        for &seed in &config.seeds {
            for arm in config.arms() {
                keys.push(ArmKey { parameterization: param, seed, arm });
            }
        }
    }
    Ok(keys)
}

/// One arm's continuation and evaluation (its `eval.json`), done or resumed, exactly as
/// [`run_ablation`] would run it; [`prepare_arms`] must have run.
pub fn run_arm(config: &AblationConfig, key: &ArmKey, device: Device) -> Result<()> {
    if !config.parameterizations.contains(&key.parameterization)
        || !config.seeds.contains(&key.seed)
        || !config.arms().contains(&key.arm)
    {
        return Err(invalid("arm", format!("{key} is not an arm of this ablation")));
    }
    let inputs = prepare_inputs(config, device)?;
    let digests = input_digests(config, &inputs.data, &inputs.ae_path, &inputs.cache_dir)?;
    let mut evaluator = ArmEvaluator::new(config, &inputs, Provenance::current(device, digests))?;
    let base = RunConfig::from_file(&config.run_config)?;
    let pre = pretrain_config(config, &base, &inputs, key.parameterization);
    let pre_ckpt = run_checkpoint::checkpoint_path(&pre.output_dir, config.pretrain_steps);
    if !done(&pre.output_dir, config.pretrain_steps) {
        return Err(invalid(
            "arm",
            format!("{key}: its pre-training is not done (prepare the arms first)"),
        ));
    }
    let weight = arm_weight(config, &base, &pre, &key.arm, &pre_ckpt, device)?.map(|c| c.weight);
    let mut run = continuation_config(config, &base, &pre, key.seed, &key.arm, weight);
    // launched as several processes (torchrun, Slurm): the arm trains data-parallel with the
    // configured batch as its global batch (batch_size / world on each rank), which trains
    // as the sequential arm does up to float summation order; rank 0 evaluates
    let (rank, world) = Launch::from_env()?.map_or((0, 1), |l| (l.rank, l.world_size));
    if world > 1 {
        if !run.train.batch_size.is_multiple_of(world) {
            return Err(invalid(
                "arm",
                format!(
                    "{key}: train.batch_size {} (the arm's global batch) is not a multiple of \
                     the {world} ranks it was launched on",
                    run.train.batch_size
                ),
            ));
        }
        run.train.batch_size /= world;
    }
    run_or_resume(&run, Some(&pre_ckpt), device)?;
    if rank != 0 {
        return Ok(());
    }
    let record = evaluator.evaluate(&run, device)?;
    tracing::info!("{key}: {} {:.3}", record.metrics.metric, record.metrics.fd);
    Ok(())
}

/// Runs (or resumes) the whole ablation and writes its report; returns every arm's result.
pub fn run_ablation(
    config: &AblationConfig,
    command: &str,
    device: Device,
) -> Result<Vec<ArmResult>> {
    let out = &config.output_dir;
    std::fs::create_dir_all(out).map_err(|e| AblationError::Io { path: out.clone(), source: e })?;
    let inputs = prepare_inputs(config, device)?;
    let digests = input_digests(config, &inputs.data, &inputs.ae_path, &inputs.cache_dir)?;
    let provenance = Provenance::current(device, digests);
    // 3. pre-training, continuations, evaluation
    let base = RunConfig::from_file(&config.run_config)?;
    let mut evaluator = ArmEvaluator::new(config, &inputs, provenance.clone())?;
    let mut results = Vec::new();
    let mut calibrations = Vec::new();
    let ceiling = evaluator.ceiling(&inputs.ae_path, device)?;
    let arms = config.arms();
    let total = config.parameterizations.len() * (1 + config.seeds.len() * arms.len());
    let overall = progress::bar(total as u64, "ablation");
    for &param in &config.parameterizations {
        let pre = pretrain_config(config, &base, &inputs, param);
        overall.set_message(format!("{param} pre-training"));
        run_or_resume(&pre, None, device)?;
        overall.inc(1);
        let pre_ckpt = run_checkpoint::checkpoint_path(&pre.output_dir, config.pretrain_steps);
        let mut weights = BTreeMap::new();
        for arm in &arms {
            let c = arm_weight(config, &base, &pre, arm, &pre_ckpt, device)?;
            if let Some(c) = c {
                calibrations.push((param.to_string(), arm.clone(), c));
            }
            weights.insert(arm.clone(), c.map(|c| c.weight));
        }
        for &seed in &config.seeds {
            for arm in &arms {
                overall.set_message(format!("{param} seed {seed} {arm}"));
                let weight = weights.get(arm).copied().flatten();
                let run = continuation_config(config, &base, &pre, seed, arm, weight);
                run_or_resume(&run, Some(&pre_ckpt), device)?;
                let record = evaluator.evaluate(&run, device)?;
                tracing::info!(
                    "{param} seed {seed} {arm}: {} {:.3}",
                    record.metrics.metric,
                    record.metrics.fd
                );
                results.push(ArmResult {
                    parameterization: param.to_string(),
                    seed,
                    arm: arm.clone(),
                    metrics: record.metrics,
                    spectrum: record.spectrum,
                    real_spectrum: record.real_spectrum,
                    run: run.output_dir.clone(),
                    provenance: record.provenance,
                    control: record.control,
                    weight: run.loss.lpl.as_ref().map(|l| l.weight).or(run
                        .loss
                        .pixel
                        .as_ref()
                        .map(|p| p.weight)),
                });
                overall.inc(1);
            }
        }
    }
    overall.finish_and_clear();
    let extras = report::Extras { ceiling: Some(ceiling), calibrations };
    report::write_report(config, command, &provenance, &results, &extras)?;
    Ok(results)
}
