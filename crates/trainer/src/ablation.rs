//! The MSE vs MSE + LPL ablation (the paper's central experiment) on the embedded default:
//! train (or reuse) the autoencoder and the latent cache, pre-train with MSE once per
//! parameterisation, fork each pre-trained run into MSE-only and MSE + LPL continuations of
//! equal length with identical data order and seeds, evaluate FD-EffNet from the EMA weights
//! with a fixed sampler and seeds, and write `results.json`, `results.csv` and `report.md`.
//!
//! Every stage is skipped when its output exists, so an interrupted ablation resumes where
//! it stopped (a half-trained run resumes from its latest checkpoint).

use std::path::{Path, PathBuf};

use lpl_data::{LatentCache, Split};
use lpl_loss::LplConfig;
use lpl_schedulers::{Parameterization, SamplerConfig, SamplerKind};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::ae_training::{AeTrainConfig, load_split, train_autoencoder};
use crate::cache_building::{CacheOptions, build_cache};
use crate::diffusion_training::{Start, train};
use crate::error::{Result, TrainError, invalid, parse_toml, read_text};
use crate::evaluation::{SampleMetrics, TrainedRun, default_effnet_weights, sample_metrics};
use crate::run_checkpoint;
use crate::run_config::{RunConfig, SampleConfig};

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

/// What an ablation runs. Paths are relative to the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// Where everything goes.
    pub output_dir: PathBuf,
    /// The autoencoder training config (its `output_dir` is replaced by `<output_dir>/ae`).
    pub autoencoder_config: PathBuf,
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
    /// The LPL arm's loss.
    pub lpl: LplConfig,
    /// Generated (and real) images per FD-EffNet.
    pub eval_count: usize,
    /// Sampler steps for evaluation.
    pub eval_steps: usize,
    /// Classifier-free guidance scale for evaluation.
    pub eval_guidance: f64,
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
        Ok(c)
    }

    /// The small smoke version: one seed, eps only, a few hundred steps, 200 images.
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
        self.autoencoder_steps = self.autoencoder_steps.min(150);
        self.pretrain_steps = self.pretrain_steps.min(300);
        self.continuation_steps = self.continuation_steps.min(60);
        self.eval_count = self.eval_count.min(200);
        self.eval_steps = self.eval_steps.min(20);
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
    /// `mse` or `lpl`.
    pub arm: String,
    /// FD-EffNet, precision, recall, density and coverage against the test split.
    pub metrics: SampleMetrics,
    /// The run directory.
    pub run: PathBuf,
}

fn done(run: &Path, steps: usize) -> bool {
    run_checkpoint::list_checkpoints(run)
        .last()
        .is_some_and(|c| *c == run_checkpoint::checkpoint_path(run, steps))
}

fn run_or_resume(config: &RunConfig, init: Option<&Path>, device: Device) -> Result<()> {
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

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Runs (or resumes) the whole ablation and writes its report; returns every arm's result.
pub fn run_ablation(
    config: &AblationConfig,
    config_path: &Path,
    quick: bool,
    device: Device,
) -> Result<Vec<ArmResult>> {
    let out = &config.output_dir;
    std::fs::create_dir_all(out)
        .map_err(|e| invalid("output_dir", format!("{}: {e}", out.display())))?;
    // 1. the autoencoder
    let mut ae_config = AeTrainConfig::from_file(&config.autoencoder_config)?;
    ae_config.output_dir = out.join("ae");
    ae_config.train.steps = config.autoencoder_steps;
    if quick {
        ae_config.eval.test_images = ae_config.eval.test_images.clamp(1, 500);
        ae_config.eval.codec_images = ae_config.eval.codec_images.min(1000);
    }
    let ae_path = ae_config.output_dir.join("autoencoder.safetensors");
    let train_images = load_split(&ae_config.data, Split::Train)?;
    if !ae_path.is_file() {
        tracing::info!("training the autoencoder ({} steps)", config.autoencoder_steps);
        let test = load_split(&ae_config.data, Split::Test)?;
        let report = train_autoencoder(&ae_config, &train_images.images, &test.images, device)?;
        tracing::info!("autoencoder test PSNR {:.2} dB", report.test_psnr);
    }
    // 2. the latent cache
    let cache_dir = out.join("cache");
    let mut ae = lpl_autoencoder::open(&ae_path, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let fingerprint = lpl_tensor_io::fingerprint(&ae.named_weights())?;
    let fresh_cache = LatentCache::open(&cache_dir)
        .is_ok_and(|c| c.check_autoencoder(&fingerprint, ae.codec()).is_ok());
    if !fresh_cache {
        let options = CacheOptions {
            pad_to: ae_config.data.pad_to,
            shard_size: 8192,
            batch: 256,
            flip: false,
            num_classes: Some(train_images.num_classes),
            autoencoder_name: ae_path.display().to_string(),
        };
        build_cache(
            ae.as_ref(),
            &train_images.images,
            Some(&train_images.labels),
            &options,
            &cache_dir,
            device,
        )?;
    }
    drop(ae);
    // 3. pre-training and continuations
    let base = RunConfig::from_file(&config.run_config)?;
    let mut results = Vec::new();
    let weights = default_effnet_weights().filter(|p| p.is_file()).ok_or_else(|| {
        invalid("eval", "EfficientNet-Lite0 weights missing: run `cargo xtask test` or `cargo xtask ablate`, which convert them")
    })?;
    let effnet = lpl_metrics::EfficientNetLite0::from_file(&weights, device)
        .map_err(|e| TrainError::Torch(e.to_string()))?;
    let test = load_split(&ae_config.data, Split::Test)?;
    let pad = ae_config.data.pad_to.unwrap_or(28);
    let real = lpl_data::preprocess::to_unit_range(&lpl_data::preprocess::pad_to(
        &test.images.narrow(0, 0, config.eval_count as i64),
        pad,
    )?)?;
    for &param in &config.parameterizations {
        let name = param.to_string();
        let mut pre = base.clone();
        pre.output_dir = out.join(&name).join("pretrain");
        pre.autoencoder = ae_path.clone();
        pre.data.cache = cache_dir.clone();
        pre.diffusion.parameterization = param;
        let flow = param == Parameterization::Flow;
        if flow {
            pre.diffusion.schedule = None;
            pre.diffusion.schedule_preset = Some("flow".to_string());
        }
        pre.loss.lpl = None;
        pre.train.steps = config.pretrain_steps;
        pre.sample = None;
        run_or_resume(&pre, None, device)?;
        let pre_ckpt = run_checkpoint::checkpoint_path(&pre.output_dir, config.pretrain_steps);
        for &seed in &config.seeds {
            for arm in ["mse", "lpl"] {
                let mut run = pre.clone();
                run.output_dir = out.join(&name).join(format!("seed{seed}")).join(arm);
                run.train.steps = config.continuation_steps;
                run.train.seed = seed;
                run.loss.lpl = (arm == "lpl").then(|| config.lpl.clone());
                run_or_resume(&run, Some(&pre_ckpt), device)?;
                let eval_file = run.output_dir.join("eval.json");
                let cached = std::fs::read_to_string(&eval_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .filter(|v| v["count"] == config.eval_count)
                    .and_then(|v| {
                        serde_json::from_value::<SampleMetrics>(v["metrics"].clone()).ok()
                    });
                let metrics = match cached {
                    Some(m) => m,
                    None => {
                        let trained = TrainedRun::open(&run.output_dir, device)?;
                        let sample = SampleConfig {
                            sampler: SamplerConfig::new(
                                if flow { SamplerKind::FlowEuler } else { SamplerKind::Ddim },
                                config.eval_steps,
                            ),
                            guidance: lpl_schedulers::Guidance::new(config.eval_guidance),
                            count: config.eval_count,
                            seed: 12_345,
                            every: 0,
                        };
                        let n = config.eval_count as i64;
                        let labels = trained
                            .num_classes
                            .map(|k| Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(k));
                        let latents = crate::sampling::sample_latents(
                            trained.model.as_ref(),
                            &trained.schedule,
                            trained.parameterization,
                            &sample,
                            labels.as_ref(),
                            &trained.latent_shape,
                            n,
                            device,
                        )?;
                        let fake =
                            crate::sampling::decode(trained.ae.as_ref(), &trained.codec, &latents)?;
                        let grid = lpl_metrics::grid::make_grid(
                            &fake.narrow(0, 0, n.min(100)),
                            trained.num_classes.unwrap_or(10),
                            2,
                        );
                        lpl_data::folder::write_png(&grid, &run.output_dir.join("samples.png"))?;
                        let (metrics, _spectrum) = sample_metrics(&effnet, &real, &fake)?;
                        let json = serde_json::json!({"count": config.eval_count, "metrics": metrics, "steps": config.eval_steps, "guidance": config.eval_guidance});
                        std::fs::write(&eval_file, json.to_string())
                            .map_err(|e| invalid("output_dir", e.to_string()))?;
                        metrics
                    }
                };
                tracing::info!("{name} seed {seed} {arm}: FD-EffNet {:.3}", metrics.fd_effnet);
                results.push(ArmResult {
                    parameterization: name.clone(),
                    seed,
                    arm: arm.to_string(),
                    metrics,
                    run: run.output_dir.clone(),
                });
            }
        }
    }
    write_report(config, config_path, quick, &results)?;
    Ok(results)
}

fn write_report(
    config: &AblationConfig,
    config_path: &Path,
    quick: bool,
    results: &[ArmResult],
) -> Result<()> {
    let out = &config.output_dir;
    let io = |e: std::io::Error| invalid("output_dir", e.to_string());
    let command = format!(
        "cargo xtask ablate --config {}{}",
        config_path.display(),
        if quick { " --quick" } else { "" }
    );
    let json = serde_json::json!({"command": command, "config": config, "results": results});
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(io)?;
    let mut csv = String::from(
        "parameterization,seed,arm,fd_effnet,precision,recall,density,coverage,spectrum_low,spectrum_high,run\n",
    );
    for r in results {
        let m = &r.metrics;
        csv += &format!(
            "{},{},{},{:.6},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{}\n",
            r.parameterization,
            r.seed,
            r.arm,
            m.fd_effnet,
            m.precision,
            m.recall,
            m.density,
            m.coverage,
            m.spectrum_low,
            m.spectrum_high,
            r.run.display()
        );
    }
    std::fs::write(out.join("results.csv"), csv).map_err(io)?;
    let mut md = format!(
        "# MSE vs MSE + LPL on Fashion-MNIST\n\nReproduce: `{command}`\n\nFD-EffNet (Frechet distance in EfficientNet-Lite0 ImageNet features, {} generated vs {} real test images, {} sampler steps, guidance {}; lower is better), mean +- std over seeds {:?}; continuations of {} steps from one MSE pre-training of {} steps per parameterisation. Precision and recall: k = 3 (Kynkaanniemi et al.), same features; high-band spectrum error: mean |log10| error of the radially averaged power spectrum above half the maximum radius; means over seeds.\n\n| parameterisation | MSE | MSE + LPL | relative change | per-seed MSE | per-seed LPL | precision MSE / LPL | recall MSE / LPL | high-band spectrum error MSE / LPL |\n|---|---|---|---|---|---|---|---|---|\n",
        config.eval_count,
        config.eval_count,
        config.eval_steps,
        config.eval_guidance,
        config.seeds,
        config.continuation_steps,
        config.pretrain_steps
    );
    for p in &config.parameterizations {
        let name = p.to_string();
        let arm = |a: &str, f: fn(&SampleMetrics) -> f64| {
            results
                .iter()
                .filter(|r| r.parameterization == name && r.arm == a)
                .map(|r| f(&r.metrics))
                .collect::<Vec<_>>()
        };
        let (mse, lpl) = (arm("mse", |m| m.fd_effnet), arm("lpl", |m| m.fd_effnet));
        let ((m, ms), (l, ls)) = (mean_std(&mse), mean_std(&lpl));
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        let avg = |v: Vec<f64>| mean_std(&v).0;
        md += &format!(
            "| {name} | {m:.2} +- {ms:.2} | {l:.2} +- {ls:.2} | {:+.1}% | {} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
            (l - m) / m * 100.0,
            fmt(&mse),
            fmt(&lpl),
            avg(arm("mse", |m| m.precision)),
            avg(arm("lpl", |m| m.precision)),
            avg(arm("mse", |m| m.recall)),
            avg(arm("lpl", |m| m.recall)),
            avg(arm("mse", |m| m.spectrum_high)),
            avg(arm("lpl", |m| m.spectrum_high)),
        );
    }
    md += "\nSample grids: `<parameterisation>/seed<s>/<arm>/samples.png`.\n";
    std::fs::write(out.join("report.md"), &md).map_err(io)?;
    println!("{md}");
    Ok(())
}
