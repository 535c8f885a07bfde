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
use lpl_loss::{LplConfig, LplGate, Normalization};
use lpl_metrics::RealReference;
use lpl_schedulers::{Parameterization, SamplerConfig, SamplerKind};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::ae_training::{AeTrainConfig, load_split, train_autoencoder};
use crate::cache_building::{CacheOptions, build_cache_from};
use crate::diffusion_training::{Start, train};
use crate::error::{Result, invalid, parse_toml, read_text};
use crate::evaluation::{SampleMetrics, TrainedRun, default_effnet_weights};
use crate::provenance::{self, Provenance};
use crate::run_config::{RunConfig, SampleConfig, ScheduleSpec};
use crate::{progress, report, run_checkpoint};

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

fn default_variants() -> Vec<LplVariant> {
    vec![LplVariant { name: "lpl".into(), ..LplVariant::default() }]
}

fn default_report_name() -> String {
    "report".into()
}

fn default_eval_seed() -> u64 {
    12_345
}

/// One LPL arm: the `[lpl]` table with some fields replaced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LplVariant {
    /// The arm's name (its run directory and its row in the report).
    pub name: String,
    /// Decoder up blocks used (0: the mid block only).
    #[serde(default)]
    pub depth: Option<usize>,
    /// SNR gate threshold (replaces the gate with `snr(t) >= tau`).
    #[serde(default)]
    pub tau: Option<f64>,
    /// Feature normalisation.
    #[serde(default)]
    pub norm: Option<Normalization>,
    /// Loss weight.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Outlier masking on or off.
    #[serde(default)]
    pub mask: Option<bool>,
}

impl LplVariant {
    /// `base` with this variant's fields.
    pub fn apply(&self, base: &LplConfig) -> LplConfig {
        let mut c = base.clone();
        if let Some(d) = self.depth {
            c.depth = Some(d);
        }
        if let Some(tau) = self.tau {
            c.gate = LplGate::Snr { tau };
        }
        if let Some(n) = self.norm {
            c.norm = n;
        }
        if let Some(w) = self.weight {
            c.weight = w;
        }
        if let Some(m) = self.mask {
            c.mask = m;
        }
        c
    }
}

/// What an ablation runs. Paths are relative to the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// Where everything goes.
    pub output_dir: PathBuf,
    /// The autoencoder training config (its `output_dir` is replaced by `<output_dir>/ae`);
    /// or give `autoencoder` (a pretrained one) and `data` instead.
    #[serde(default)]
    pub autoencoder_config: Option<PathBuf>,
    /// A pretrained autoencoder (a diffusers VAE folder, a TAESD pair folder or an lpl
    /// checkpoint): nothing is trained, `data` is encoded with it.
    #[serde(default)]
    pub autoencoder: Option<PathBuf>,
    /// The dataset, with a pretrained `autoencoder` (otherwise the autoencoder config's).
    #[serde(default)]
    pub data: Option<lpl_data::DatasetConfig>,
    /// A latent cache built beforehand (`lpl cache --config ...`) with that autoencoder, used
    /// instead of encoding `data` here (paper scale).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Base name of the report files (`<name>.md`, `<name>.html`; results as
    /// `results[-suffix].json`), so sweeps sharing an output directory keep their own.
    #[serde(default = "default_report_name")]
    pub report_name: String,
    /// The base diffusion run config (paths, steps, seed and loss are set per run).
    pub run_config: PathBuf,
    /// Parameterisations compared (`eps`, `v`, `flow`).
    pub parameterizations: Vec<Parameterization>,
    /// Seeds of the continuations.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Autoencoder training steps (overrides its config).
    pub autoencoder_steps: usize,
    /// MSE pre-training steps per parameterisation.
    pub pretrain_steps: usize,
    /// Steps of each continuation.
    pub continuation_steps: usize,
    /// The LPL arm's loss (`preset = "paper"` with overrides, or every field).
    #[serde(deserialize_with = "lpl_loss::config::with_preset")]
    pub lpl: LplConfig,
    /// Generated (and real) images per FD-EffNet.
    pub eval_count: usize,
    /// Sampler steps for evaluation.
    pub eval_steps: usize,
    /// Classifier-free guidance scale for evaluation.
    pub eval_guidance: f64,
    /// Seed of the evaluation noise (the same for every arm).
    #[serde(default = "default_eval_seed")]
    pub eval_seed: u64,
    /// The LPL arms compared with MSE (default: one, `lpl`, the `[lpl]` table as is).
    #[serde(default = "default_variants")]
    pub variants: Vec<LplVariant>,
    /// Train the autoencoder and build the cache on the first this many training images
    /// (default: all).
    #[serde(default)]
    pub train_images: Option<usize>,
}

impl AblationConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: Self = parse_toml(&read_text(path)?, path)?;
        if c.parameterizations.is_empty() || c.seeds.is_empty() {
            return Err(invalid(
                "parameterizations",
                "need at least one parameterisation and one seed",
            ));
        }
        if c.pretrain_steps == 0
            || c.continuation_steps == 0
            || c.autoencoder_steps == 0
            || c.eval_count < 2
        {
            return Err(invalid("pretrain_steps", "step counts must be >= 1 and eval_count >= 2"));
        }
        c.lpl.validate().map_err(|e| invalid("lpl", e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for v in &c.variants {
            if v.name.is_empty()
                || ["mse", "pretrain"].contains(&v.name.as_str())
                || !v.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                || !names.insert(v.name.clone())
            {
                return Err(invalid(
                    "variants",
                    format!(
                        "variant name `{}`: must be unique, [A-Za-z0-9_-], not mse or pretrain",
                        v.name
                    ),
                ));
            }
            v.apply(&c.lpl)
                .validate()
                .map_err(|e| invalid("variants", format!("`{}`: {e}", v.name)))?;
        }
        match (&c.autoencoder_config, &c.autoencoder, &c.data) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(invalid(
                    "autoencoder_config",
                    "give either `autoencoder_config` (an autoencoder trained here) or `autoencoder` \
                     (pretrained) together with `[data]`",
                ));
            }
        }
        if let Some(d) = &c.data {
            d.validate()?;
        }
        if c.report_name.is_empty() || c.report_name.contains('/') {
            return Err(invalid("report_name", "a plain file name"));
        }
        if c.variants.is_empty() {
            return Err(invalid("variants", "need at least one LPL variant"));
        }
        Ok(c)
    }

    /// Only these parameterisations (`--only eps`: reproduces one row group of the report).
    pub fn only(mut self, keep: &[Parameterization]) -> Result<Self> {
        if let Some(p) = keep.iter().find(|p| !self.parameterizations.contains(p)) {
            return Err(invalid("parameterizations", format!("`{p}` is not in this ablation")));
        }
        self.parameterizations.retain(|p| keep.contains(p));
        Ok(self)
    }

    /// The names of the arms: `mse`, then the variants.
    pub fn arms(&self) -> Vec<String> {
        std::iter::once("mse".to_string())
            .chain(self.variants.iter().map(|v| v.name.clone()))
            .collect()
    }

    /// The small smoke version (minutes on 2 cores): one seed, eps only, 5000 training
    /// images, a few hundred steps, 100 evaluation images.
    pub fn quick(mut self) -> Self {
        self.output_dir = self.output_dir.with_file_name(format!(
            "{}-quick",
            self.output_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        ));
        self.parameterizations = vec![Parameterization::Eps];
        self.seeds = vec![0];
        self.autoencoder_steps = self.autoencoder_steps.min(100);
        self.pretrain_steps = self.pretrain_steps.min(150);
        self.continuation_steps = self.continuation_steps.min(30);
        self.eval_count = self.eval_count.min(100);
        self.eval_steps = self.eval_steps.min(10);
        self.train_images = Some(self.train_images.unwrap_or(usize::MAX).min(5000));
        self
    }
}

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
    run_checkpoint::check_same_run(&config.output_dir, config)?;
    if done(&config.output_dir, config.train.steps) {
        return Ok(());
    }
    let start = if run_checkpoint::list_checkpoints(&config.output_dir).is_empty() {
        init.map_or(Start::Fresh, |p| Start::InitFrom(p.to_path_buf()))
    } else {
        Start::Resume
    };
    train(config, start, device).map(|_| ())
}

/// Runs (or resumes) the whole ablation and writes its report; returns every arm's result.
pub fn run_ablation(
    config: &AblationConfig,
    command: &str,
    device: Device,
) -> Result<Vec<ArmResult>> {
    let out = &config.output_dir;
    std::fs::create_dir_all(out)
        .map_err(|e| invalid("output_dir", format!("{}: {e}", out.display())))?;
    // 1. the autoencoder: trained here, or pretrained
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
    // 2. the latent cache: given, or built here (shard by shard)
    let mut ae = lpl_autoencoder::open(&ae_path, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let fingerprint = lpl_tensor_io::fingerprint(&ae.named_weights())?;
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
    drop(ae);
    let provenance =
        Provenance::current(device, input_digests(config, &data, &ae_path, &cache_dir)?);
    // 3. pre-training, continuations, evaluation
    let base = RunConfig::from_file(&config.run_config)?;
    let mut results = Vec::new();
    let test = data.open(Split::Test)?;
    let real = lpl_data::preprocess::to_unit_range(
        &test.read(0, (config.eval_count as i64).min(test.len()))?.images,
    )?;
    // the feature network and the real statistics, made on first need
    let mut reference: Option<(lpl_metrics::EfficientNetLite0, RealReference)> = None;
    let arms = config.arms();
    let total = config.parameterizations.len() * (1 + config.seeds.len() * arms.len());
    let overall = progress::bar(total as u64, "ablation");
    for &param in &config.parameterizations {
        let name = param.to_string();
        let mut pre = base.clone();
        pre.output_dir = out.join(&name).join("pretrain");
        pre.autoencoder = ae_path.clone();
        pre.data.cache = cache_dir.clone();
        pre.diffusion.parameterization = param;
        let flow = param == Parameterization::Flow;
        if flow {
            pre.diffusion.schedule = ScheduleSpec::Preset("flow".to_string());
        }
        pre.loss.lpl = None;
        pre.train.steps = config.pretrain_steps;
        pre.train.log_every = pre.train.log_every.min(config.pretrain_steps / 20).max(1);
        pre.sample = None;
        overall.set_message(format!("{name} pre-training"));
        run_or_resume(&pre, None, device)?;
        overall.inc(1);
        let pre_ckpt = run_checkpoint::checkpoint_path(&pre.output_dir, config.pretrain_steps);
        for &seed in &config.seeds {
            for arm in &arms {
                overall.set_message(format!("{name} seed {seed} {arm}"));
                let mut run = pre.clone();
                run.output_dir = out.join(&name).join(format!("seed{seed}")).join(arm);
                run.train.steps = config.continuation_steps;
                run.train.log_every =
                    base.train.log_every.min(config.continuation_steps / 10).max(1);
                run.train.seed = seed;
                run.loss.lpl =
                    config.variants.iter().find(|v| &v.name == arm).map(|v| v.apply(&config.lpl));
                run_or_resume(&run, Some(&pre_ckpt), device)?;
                let eval_file = run.output_dir.join("eval.json");
                let cached = std::fs::read_to_string(&eval_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<EvalRecord>(&t).ok())
                    .filter(|r| {
                        // the sampling settings and the checkpoint: a continuation extended
                        // by a larger `continuation_steps` is evaluated again
                        (r.count, r.steps, r.guidance, r.seed, r.checkpoint_step)
                            == (
                                config.eval_count,
                                config.eval_steps,
                                config.eval_guidance,
                                config.eval_seed,
                                Some(config.continuation_steps),
                            )
                    });
                let record = match cached {
                    Some(r) => r,
                    None => {
                        if reference.is_none() {
                            let weights = default_effnet_weights().filter(|p| p.is_file()).ok_or_else(|| {
                                invalid("eval", "EfficientNet-Lite0 weights missing: run `cargo xtask ablate` or `cargo xtask test`, which convert them")
                            })?;
                            let net = lpl_metrics::EfficientNetLite0::from_file(&weights, device)?;
                            let r = RealReference::new(&net, &real)?;
                            reference = Some((net, r));
                        }
                        let Some((net, real_ref)) = reference.as_ref() else {
                            return Err(invalid("eval", "no reference"));
                        };
                        let trained = TrainedRun::open(&run.output_dir, device)?;
                        let sample = SampleConfig {
                            sampler: SamplerConfig::new(
                                if flow { SamplerKind::FlowEuler } else { SamplerKind::Ddim },
                                config.eval_steps,
                            ),
                            guidance: lpl_schedulers::Guidance::new(config.eval_guidance),
                            count: config.eval_count,
                            seed: config.eval_seed,
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
                            count: config.eval_count,
                            steps: config.eval_steps,
                            guidance: config.eval_guidance,
                            seed: config.eval_seed,
                            metrics,
                            spectrum: spectrum.fake,
                            real_spectrum: spectrum.real,
                            checkpoint_step: Some(config.continuation_steps),
                            provenance: Some(provenance.clone()),
                        };
                        let text = serde_json::to_string_pretty(&record)
                            .map_err(|e| invalid("output_dir", e.to_string()))?;
                        lpl_tensor_io::write_atomically(&eval_file, text.as_bytes())
                            .map_err(|e| invalid("output_dir", e.to_string()))?;
                        record
                    }
                };
                tracing::info!(
                    "{name} seed {seed} {arm}: {} {:.3}",
                    record.metrics.metric,
                    record.metrics.fd
                );
                results.push(ArmResult {
                    parameterization: name.clone(),
                    seed,
                    arm: arm.clone(),
                    metrics: record.metrics,
                    spectrum: record.spectrum,
                    real_spectrum: record.real_spectrum,
                    run: run.output_dir.clone(),
                    provenance: record.provenance,
                });
                overall.inc(1);
            }
        }
    }
    overall.finish_and_clear();
    report::write_report(config, command, &provenance, &results)?;
    Ok(results)
}
