//! What happens around the diffusion loop's optimiser steps, each a small collaborator the
//! loop calls after every step: `StepLog` (metrics, progress, the non-finite stop rule),
//! `Checkpointer`, `PeriodicEvaluator` (`[eval]`: FD, best checkpoint) and `GridWriter`
//! (`[sample]`), then any user [`Hook`] with the step's [`StepEnd`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_denoiser::Denoiser;
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::{Device, Tensor};

use crate::adamw::AdamW;
use crate::ema::Ema;
use crate::error::{Result, TrainError, invalid};
use crate::run_checkpoint::{self, RunState};
use crate::run_config::{PeriodicEval, RunConfig, SampleConfig};
use crate::sampling::{self, SampleRequest};
use crate::step_log::{MetricsFile, StepCounters, StepTerms};

/// What a finished optimiser step leaves for the collaborators.
pub struct StepEnd<'a> {
    /// Steps done (this one included).
    pub step: usize,
    /// The run's total steps.
    pub total: usize,
    /// The denoiser (its training weights).
    pub model: &'a dyn Denoiser,
    /// Its EMA.
    pub ema: &'a Ema,
    /// The latest checkpoint (this step's when it was a checkpoint step).
    pub checkpoint: Option<&'a Path>,
    /// Whether this step was a checkpoint step.
    pub checkpointed: bool,
    /// The sample grid written at this step, if one was (for hooks: grids run before them).
    pub grid: Option<&'a Path>,
}

/// A user's addition to the loop (a logger, a probe): called after every step.
pub trait Hook {
    /// After the step `end.step` and its checkpoint, evaluation and grid. `lines` are the
    /// `metrics.jsonl` lines written at this step (the step's own at log steps, then the
    /// evaluation's at evaluation steps).
    fn after_step(&mut self, end: &StepEnd<'_>, lines: &[serde_json::Value]) -> Result<()>;
}

/// What one optimiser step produced, on the device (no host read).
pub(crate) struct StepValues {
    /// The learning rate used.
    pub lr: f64,
    /// 0-d f32, 1 when the step was skipped.
    pub found_inf: Tensor,
    /// The mean loss over the micro-batches, 0-d f32.
    pub loss: Tensor,
    /// The gradients' total norm before clipping, 0-d f32.
    pub grad_norm: Tensor,
    /// The objective's named terms.
    pub terms: StepTerms,
}

/// Device-side counters, `metrics.jsonl`, the progress bar and the stop rule for runs of
/// non-finite steps.
pub(crate) struct StepLog {
    counters: StepCounters,
    /// `None` on ranks other than 0: only rank 0 writes.
    metrics: Option<MetricsFile>,
    bar: indicatif::ProgressBar,
    started: Instant,
    first_step: usize,
    samples_per_step: usize,
    log_every: usize,
    max_nonfinite: usize,
    pub skipped: usize,
    pub last_loss: f64,
}

impl StepLog {
    /// The log of a run on `world` (the progress bar and `metrics.jsonl` on rank 0 only;
    /// every rank counts, so all take the same decision to stop).
    pub fn open(
        config: &RunConfig,
        step: usize,
        device: Device,
        world: &crate::distributed::World,
    ) -> Result<Self> {
        let t = &config.train;
        let (bar, metrics) = if world.is_main() {
            let bar = crate::progress::bar(t.steps as u64, "train");
            bar.set_position(step.min(t.steps) as u64);
            (bar, Some(MetricsFile::open(&config.output_dir.join("metrics.jsonl"), step)?))
        } else {
            (indicatif::ProgressBar::hidden(), None)
        };
        Ok(Self {
            counters: StepCounters::new(device),
            metrics,
            bar,
            started: Instant::now(),
            first_step: step,
            // the global batch: throughput of the whole run
            samples_per_step: t.batch_size * t.grad_accum.max(1) * world.size(),
            log_every: t.log_every,
            max_nonfinite: t.max_nonfinite,
            skipped: 0,
            last_loss: f64::NAN,
        })
    }

    /// Samples per second of this invocation.
    pub fn samples_per_sec(&self, step: usize) -> f64 {
        (step - self.first_step) as f64 * self.samples_per_step as f64
            / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Records step `step` (already counted); at log and checkpoint steps reads the counters
    /// (the only host reads) and stops a run of `max_nonfinite` skipped steps. Returns the
    /// `metrics.jsonl` line when one was written.
    pub fn record(
        &mut self,
        step: usize,
        total: usize,
        checkpoint_now: bool,
        v: &StepValues,
    ) -> Result<Option<serde_json::Value>> {
        let lr = v.lr;
        self.counters.record(&v.found_inf, &v.loss, &v.grad_norm, &v.terms);
        self.bar.inc(1);
        if step.is_multiple_of(self.log_every) || checkpoint_now {
            let skipped_now = self.counters.skipped.double_value(&[]) as usize;
            if skipped_now > self.skipped {
                tracing::warn!(
                    "{} step(s) with a non-finite loss skipped by step {step}",
                    skipped_now - self.skipped
                );
                self.skipped = skipped_now;
            }
            let longest = self.counters.longest_run.double_value(&[]) as usize;
            if longest >= self.max_nonfinite {
                return Err(TrainError::NonFiniteRun { run: longest, step });
            }
        }
        if !(step.is_multiple_of(self.log_every) || step == total) {
            return Ok(None);
        }
        let sps = self.samples_per_sec(step);
        let (loss, line) = self.counters.take_window(step, lr, sps)?;
        self.last_loss = loss;
        if let Some(m) = self.metrics.as_mut() {
            m.append(&line)?;
        }
        self.bar.set_message(format!("loss {loss:.4} lr {lr:.1e} {sps:.0} samples/s"));
        Ok(Some(line))
    }

    /// Appends an evaluation line.
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        match self.metrics.as_mut() {
            Some(m) => m.append(line),
            None => Ok(()),
        }
    }

    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// Writes the run state, model, EMA and optimiser every `checkpoint_every` steps and at
/// the end, atomically, keeping the newest `keep_checkpoints`.
pub(crate) struct Checkpointer {
    pub last: Option<PathBuf>,
    config_toml: String,
    codec_json: String,
    world_size: usize,
}

impl Checkpointer {
    pub fn new(config: &RunConfig, codec: &LatentCodec, world_size: usize) -> Result<Self> {
        Ok(Self {
            last: run_checkpoint::list_checkpoints(&config.output_dir).last().cloned(),
            config_toml: config.to_toml()?,
            codec_json: codec.to_json(),
            world_size,
        })
    }

    /// Whether step `step` (already counted) writes a checkpoint.
    pub fn due(config: &RunConfig, step: usize) -> bool {
        let t = &config.train;
        (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || step == t.steps
    }

    pub fn save(
        &mut self,
        config: &RunConfig,
        model: &dyn Denoiser,
        ema: &Ema,
        opt: &AdamW,
        state: RunState,
    ) -> Result<()> {
        let mut tensors = named(model.var_store(), "model.");
        tensors.extend(ema.tensors().iter().map(|(k, v)| (format!("ema.{k}"), v.shallow_clone())));
        tensors.extend(opt.state_tensors());
        let state = RunState {
            config_toml: self.config_toml.clone(),
            codec_json: self.codec_json.clone(),
            world_size: self.world_size,
            ..state
        };
        self.last = Some(run_checkpoint::save(
            &config.output_dir,
            &state,
            tensors,
            config.train.keep_checkpoints,
        )?);
        Ok(())
    }
}

fn named(vs: &tch::nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// What sampling during training needs besides the model: decoder, schedule, data shape.
pub(crate) struct SampleContext<'a> {
    pub ae: &'a dyn Autoencoder,
    pub codec: &'a LatentCodec,
    pub schedule: &'a NoiseSchedule,
    pub parameterization: Parameterization,
    pub latent_shape: [i64; 3],
    pub classes: Option<i64>,
    pub device: Device,
}

impl SampleContext<'_> {
    fn request<'m>(&'m self, model: &'m dyn Denoiser, sample: &SampleConfig) -> SampleRequest<'m> {
        SampleRequest::new(
            model,
            self.schedule,
            self.parameterization,
            self.latent_shape,
            sample,
            self.device,
        )
        .cycling(self.classes)
    }
}

/// `[sample]`: a grid from the EMA weights every `every` steps and at the end.
pub(crate) struct GridWriter {
    sample: SampleConfig,
    dir: PathBuf,
    pub last: Option<PathBuf>,
}

impl GridWriter {
    pub fn new(config: &RunConfig) -> Option<Self> {
        let sample = config.sample.clone()?;
        Some(Self { sample, dir: config.output_dir.join("grids"), last: None })
    }

    /// Writes the grid of this step when one is due; returns its path.
    pub fn after_step(
        &mut self,
        end: &StepEnd<'_>,
        ctx: &SampleContext<'_>,
    ) -> Result<Option<PathBuf>> {
        let periodic = self.sample.every > 0 && end.step.is_multiple_of(self.sample.every);
        if !(periodic || end.step == end.total) {
            return Ok(None);
        }
        let path = self.dir.join(format!("step-{:07}.png", end.step));
        let request = ctx.request(end.model, &self.sample);
        sampling::with_ema_weights(end.model, end.ema, || {
            request.write_grid(ctx.ae, ctx.codec, &path)
        })?;
        self.last = Some(path.clone());
        Ok(Some(path))
    }
}

/// The state of `[eval]`: the feature network, the real images' statistics and the best FD
/// (rank 0's; every rank samples its share of the images).
pub(crate) struct PeriodicEvaluator {
    config: PeriodicEval,
    /// The feature network and the real images' statistics, on rank 0 only.
    judge: Option<(lpl_metrics::EfficientNetLite0, lpl_metrics::RealReference)>,
    best_fd: f64,
    dir: PathBuf,
}

impl PeriodicEvaluator {
    pub fn new(config: &PeriodicEval, dir: &Path, device: Device, main: bool) -> Result<Self> {
        let judge = main.then(|| Self::judge(config, device)).transpose()?;
        // a resumed run remembers its best so far
        let best_fd = std::fs::read_to_string(dir.join("best.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["fd"].as_f64())
            .unwrap_or(f64::INFINITY);
        Ok(Self { config: config.clone(), judge, best_fd, dir: dir.to_path_buf() })
    }

    fn judge(
        config: &PeriodicEval,
        device: Device,
    ) -> Result<(lpl_metrics::EfficientNetLite0, lpl_metrics::RealReference)> {
        let weights = config
            .effnet
            .clone()
            .or_else(crate::evaluation::default_effnet_weights)
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                invalid(
                    "eval.effnet",
                    "EfficientNet-Lite0 weights not found (`cargo xtask test` converts them)",
                )
            })?;
        let net = lpl_metrics::EfficientNetLite0::from_file(&weights, device)?;
        let test = config.data.open(lpl_data::Split::Test)?;
        let real = lpl_data::preprocess::to_unit_range(
            &test.read(0, (config.count as i64).min(test.len()))?.images,
        )?;
        let reference = lpl_metrics::RealReference::new(&net, &real)?;
        Ok((net, reference))
    }

    /// At evaluation steps (which are checkpoint steps): every rank samples its share of
    /// the batches from the EMA weights; rank 0 gathers them, computes the metrics, keeps a
    /// new best checkpoint as `best.safetensors` and returns the `metrics.jsonl` line.
    pub fn after_step(
        &mut self,
        end: &StepEnd<'_>,
        ctx: &SampleContext<'_>,
        world: &crate::distributed::World,
    ) -> Result<Option<serde_json::Value>> {
        let due = end.step.is_multiple_of(self.config.every) || end.step == end.total;
        if !(due && end.checkpointed) {
            return Ok(None);
        }
        let sample = SampleConfig {
            sampler: self.config.sampler.clone(),
            guidance: self.config.guidance.clone(),
            count: self.config.count,
            seed: self.config.seed,
            every: 0,
        };
        let batch = match self.config.batch {
            0 if world.size() > 1 => self.config.count.div_ceil(world.size()),
            b => b,
        };
        let request = SampleRequest { batch, ..ctx.request(end.model, &sample) };
        let images = sampling::with_ema_weights(end.model, end.ema, || {
            request.images_across(world, ctx.ae, ctx.codec, &self.dir, "periodic-eval")
        })?;
        let Some(images) = images else { return Ok(None) };
        let m = self.evaluate(&images, end.step, end.checkpoint)?;
        tracing::info!("step {}: {} {:.3} (best {:.3})", end.step, m.metric, m.fd, self.best_fd);
        Ok(Some(serde_json::json!({"step": end.step, "eval": m})))
    }

    /// Metrics of `images` (CPU or device, `[0, 1]`); a new best copies `checkpoint` to
    /// `best.safetensors` (atomically) and records it in `best.json`.
    fn evaluate(
        &mut self,
        images: &Tensor,
        step: usize,
        checkpoint: Option<&Path>,
    ) -> Result<lpl_metrics::ImageMetrics> {
        let Some((net, reference)) = &self.judge else {
            return Err(invalid("eval", "only rank 0 evaluates"));
        };
        let (m, _) = reference.compare(net, &images.to_device(Device::Cpu))?;
        if m.fd < self.best_fd
            && let Some(ckpt) = checkpoint
        {
            link_atomically(ckpt, &self.dir.join("best.safetensors"))?;
            let record = serde_json::json!({"step": step, "fd": m.fd, "metric": m.metric, "checkpoint": ckpt});
            lpl_tensor_io::write_atomically(
                &self.dir.join("best.json"),
                record.to_string().as_bytes(),
            )?;
            self.best_fd = m.fd;
        }
        Ok(m)
    }
}

/// Makes `to` another name of the finished checkpoint `from` (a hard link: checkpoints are
/// never modified in place, and pruning `from` later leaves `to` intact), through a temporary
/// name and a rename so `to` is never half there; copies when linking is not possible.
fn link_atomically(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension(format!("tmp-{}", std::process::id()));
    let io = |e: std::io::Error| TrainError::Io { path: to.to_path_buf(), source: e };
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    }
    std::fs::rename(&tmp, to).map_err(io)
}

/// `[log] profile = N`: libtorch's profiler over N steps after one warm-up step of this
/// invocation, written as a Chrome trace to `<output_dir>/profile/trace.json`.
pub(crate) struct StepProfiler {
    window: std::ops::Range<usize>,
    path: PathBuf,
    running: Option<lpl_torch_ext::profiler::Profile>,
    cuda: bool,
}

impl StepProfiler {
    pub fn new(config: &RunConfig, first_step: usize, device: Device) -> Option<Self> {
        let n = config.log.profile.filter(|n| *n > 0)?;
        let start = first_step + 1;
        Some(Self {
            window: start..start + n,
            path: config.output_dir.join("profile").join("trace.json"),
            running: None,
            cuda: device.is_cuda(),
        })
    }

    /// Before the step that has done `step` steps so far.
    pub fn before_step(&mut self, step: usize) -> Result<()> {
        if step == self.window.start && self.running.is_none() {
            self.running = Some(lpl_torch_ext::profiler::Profile::start(self.cuda)?);
        }
        Ok(())
    }

    /// After a step, `step` now counting it (and after the run's last step).
    pub fn after_step(&mut self, step: usize, last: bool) -> Result<()> {
        if (step >= self.window.end || last)
            && let Some(profile) = self.running.take()
        {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)
                .map_err(|e| TrainError::Io { path: dir.to_path_buf(), source: e })?;
            profile.save(&self.path)?;
            // where the time went, as torch.profiler's key_averages table
            let summary = crate::profile_summary::ProfileSummary::from_file(&self.path)?;
            let table = dir.join("ops.md");
            let text = format!(
                "# Operators of steps {:?} ({})\n\n{}",
                self.window,
                self.path.display(),
                summary.table(30)
            );
            lpl_tensor_io::write_atomically(&table, text.as_bytes())?;
            tracing::info!(
                "profile of steps {:?} written to {} (operators by self time: {})\n{}",
                self.window,
                self.path.display(),
                table.display(),
                summary.table(10)
            );
        }
        Ok(())
    }
}
