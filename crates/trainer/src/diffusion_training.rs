//! The diffusion training loop: MSE on the parameterisation's target (optionally min-SNR
//! weighted) plus, when configured, the latent perceptual loss; AdamW with warm-up and
//! clipping, EMA, atomic checkpoints with exact resume, JSONL metrics, sample grids.
//!
//! Determinism: the data order comes from `(seed, epoch)`, t from a host generator whose
//! state is checkpointed, and libtorch's generator (noise, label dropout, flips) is reseeded
//! from `(seed, step)` at every step; so a resumed run repeats the uninterrupted one exactly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_data::{BatchCursor, CacheBatches, LatentCache};
use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig, UNet, UNetConfig};
use lpl_loss::{LatentPerceptualLoss, x0_from_prediction};
use lpl_schedulers::{NoiseSchedule, TimeSampler, min_snr_weights};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

use crate::adamw::AdamW;
use crate::ema::Ema;
use crate::error::{Result, TrainError, invalid};
use crate::run_checkpoint::{self, RunState};
use crate::run_config::{RunConfig, SampleConfig};
use crate::sampling::SampleRequest;
use crate::step_log::{LplTerms, MetricsFile, StepCounters};
use crate::{progress, sampling};

/// Batches gathered ahead of the training step on a background thread.
const PREFETCH_BATCHES: usize = 4;

/// How `train` starts.
#[derive(Debug, Clone, Default)]
pub enum Start {
    /// A new run (fails if the output directory already holds checkpoints).
    #[default]
    Fresh,
    /// Continue from the run's latest checkpoint.
    Resume,
    /// A new run whose model and EMA start from another run's checkpoint (fresh optimiser),
    /// e.g. the LPL phase after MSE pre-training.
    InitFrom(PathBuf),
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Step reached.
    pub step: usize,
    /// Mean total loss over the last log interval.
    pub last_loss: f64,
    /// The last checkpoint.
    pub checkpoint: PathBuf,
    /// Training throughput, samples per second (this invocation).
    pub samples_per_sec: f64,
    /// The final sample grid, when sampling is configured.
    pub grid: Option<PathBuf>,
    /// Non-finite steps skipped.
    pub skipped_steps: usize,
}

/// Builds the configured denoiser for latents `(C, h, w)` and `classes` classes.
pub fn build_model(
    config: &RunConfig,
    latent_shape: [i64; 3],
    classes: Option<i64>,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    let _rng = GlobalRng::seeded(config.train.seed as i64);
    let [c, h, _] = latent_shape;
    let preset = config.model.preset.as_str();
    let classes = classes.unwrap_or(1);
    if preset.starts_with("dit-") {
        let mut d =
            DitConfig::preset(preset).map_err(|e| invalid("model.preset", e.to_string()))?;
        d.in_channels = c;
        d.sample_size = h;
        d.num_embeds_ada_norm = Some(classes);
        if let Some(p) = config.model.class_dropout_prob {
            d.class_dropout_prob = p;
        }
        Ok(Box::new(
            Dit::new(&d, device, Kind::Float).map_err(|e| invalid("model", e.to_string()))?,
        ))
    } else {
        let mut u =
            UNetConfig::preset(preset).map_err(|e| invalid("model.preset", e.to_string()))?;
        u.in_channels = c;
        u.out_channels = c;
        u.num_class_embeds = Some(classes + 1);
        if let Some(p) = config.model.class_dropout_prob {
            u.class_dropout_prob = p;
        }
        Ok(Box::new(
            UNet::new(&u, device, Kind::Float).map_err(|e| invalid("model", e.to_string()))?,
        ))
    }
}

fn step_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        as i64
        & i64::MAX
}

fn named(vs: &tch::nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Opens the autoencoder of a run, frozen, in f32.
pub fn open_autoencoder(config: &RunConfig, device: Device) -> Result<Box<dyn Autoencoder>> {
    let mut ae = lpl_autoencoder::open(&config.autoencoder, device, Kind::Float)?;
    ae.set_requires_grad(false);
    Ok(ae)
}

/// Trains as configured; see the module docs for determinism.
pub fn train(config: &RunConfig, start: Start, device: Device) -> Result<TrainOutcome> {
    config.validate()?;
    // the initialisation and every step draw from libtorch's global generator: hold it
    // from building the model to the end of training
    let _rng = GlobalRng::lock();
    let cache = LatentCache::open(&config.data.cache)?;
    let model =
        build_model(config, cache.manifest.latent_shape, cache.manifest.num_classes, device)?;
    train_model(config, model.as_ref(), start, device)
}

/// [`train`] with a denoiser built by the caller (a user's own [`Denoiser`]; `model.preset`
/// of the config is then not used). Its input must match the cache's latents.
pub fn train_model(
    config: &RunConfig,
    model: &dyn Denoiser,
    start: Start,
    device: Device,
) -> Result<TrainOutcome> {
    config.validate()?;
    // every step reseeds libtorch's global generator: hold it for the whole run
    let _rng = GlobalRng::lock();
    let cache = LatentCache::open(&config.data.cache)?;
    let ae = open_autoencoder(config, device)?;
    let codec: LatentCodec = cache.manifest.codec.clone();
    let fingerprint = lpl_tensor_io::fingerprint(&ae.named_weights())?;
    cache.check_autoencoder(&fingerprint, &codec)?;
    if model.in_channels() != cache.manifest.latent_shape[0] {
        return Err(invalid(
            "model",
            format!(
                "the denoiser takes {} channels, the cache holds {}",
                model.in_channels(),
                cache.manifest.latent_shape[0]
            ),
        ));
    }
    let schedule = NoiseSchedule::new(&config.diffusion.schedule()?)?.to_device(device);
    let param = config.diffusion.parameterization;
    let precision = &config.precision;
    if device.is_cuda() {
        lpl_torch_ext::tf32::set(precision.tf32)?;
    }
    let autocast = precision.compute.autocast();
    let mut opt = AdamW::new(model.var_store(), config.optim.adamw())?;
    let mut ema = Ema::new(model.var_store(), config.ema.clone())?;
    let mut time_sampler =
        TimeSampler::new(config.diffusion.time_sampling.clone(), config.train.seed)?;
    let mut cursor = BatchCursor::default();
    let mut step = 0usize;
    let existing = run_checkpoint::list_checkpoints(&config.output_dir);
    match &start {
        Start::Fresh if !existing.is_empty() => {
            return Err(invalid(
                "output_dir",
                format!(
                    "{} already holds checkpoints: pass --resume or choose another output_dir",
                    config.output_dir.display()
                ),
            ));
        }
        Start::Fresh => {}
        Start::Resume => {
            let latest = existing.last().ok_or_else(|| {
                invalid(
                    "output_dir",
                    format!("--resume: no checkpoint in {}", config.output_dir.display()),
                )
            })?;
            let (state, tensors) = run_checkpoint::load(latest)?;
            lpl_tensor_io::load_into(
                model.var_store(),
                &run_checkpoint::strip_prefix(&tensors, "model."),
                latest,
            )?;
            ema.load(&tensors, "ema.")?;
            opt.load_state(&tensors, state.adamw_step)?;
            time_sampler = TimeSampler::with_state(
                config.diffusion.time_sampling.clone(),
                state.time_sampler_state,
            )?;
            cursor = state.cursor;
            step = state.step;
            tracing::info!("resumed {} at step {step}", latest.display());
        }
        Start::InitFrom(path) => {
            let (_, tensors) = run_checkpoint::load(path)?;
            lpl_tensor_io::load_into(
                model.var_store(),
                &run_checkpoint::strip_prefix(&tensors, "model."),
                path,
            )?;
            ema.load(&tensors, "ema.")?;
            tracing::info!("initialised from {}", path.display());
        }
    }
    let lpl = match &config.loss.lpl {
        Some(c) => Some(LatentPerceptualLoss::new(ae.as_ref(), codec.clone(), c.clone())?),
        None => None,
    };
    std::fs::create_dir_all(&config.output_dir).map_err(|e| TrainError::ConfigFile {
        path: config.output_dir.clone(),
        message: e.to_string(),
    })?;
    let mut metrics = MetricsFile::open(&config.output_dir.join("metrics.jsonl"), step)?;
    let config_toml = config.to_toml()?;
    let t = &config.train;
    let total = t.steps;
    let bar = progress::bar(total as u64, "train");
    bar.set_position(step.min(total) as u64);
    let started = Instant::now();
    let first_step = step;
    let mut skipped = 0usize;
    let mut counters = StepCounters::new(device);
    let mut last_loss = f64::NAN;
    let mut last_checkpoint = run_checkpoint::list_checkpoints(&config.output_dir).last().cloned();
    let mut grid = None;
    let mut evaluator = match &config.eval {
        Some(e) => Some(PeriodicEvaluator::new(e, &config.output_dir, device)?),
        None => None,
    };
    if config.data.flip && !cache.manifest.flipped {
        return Err(invalid(
            "data.flip",
            format!(
                "the latent cache {} holds no flipped copies: rebuild it with `flip = true`, or set data.flip = false",
                config.data.cache.display()
            ),
        ));
    }
    let cache = Arc::new(cache);
    let mut batches =
        CacheBatches::new(cache.clone(), t.batch_size, t.seed, config.data.flip, cursor)?
            .prefetch(PREFETCH_BATCHES);
    while step < total {
        tch::manual_seed(step_seed(t.seed, step));
        opt.zero_grad();
        let accum = t.grad_accum.max(1);
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut mse_sum = Tensor::zeros([], (Kind::Float, device));
        let mut lpl_terms: Option<LplTerms> = None;
        for _micro in 0..accum {
            let (batch, batch_cursor) = batches
                .next()
                .ok_or_else(|| invalid("data.cache", "the batch reader stopped"))??;
            cursor = batch_cursor;
            let z0 = batch.latents.to_device(device);
            let labels = batch.labels.as_ref().map(|l| l.to_device(device));
            let b = batch.indices.len();
            let t_cpu = time_sampler.sample(&schedule, b, Device::Cpu)?;
            let t_dev = t_cpu.to_device(device);
            let eps = z0.randn_like();
            let z_t = schedule.add_noise(&z0, &eps, &t_dev)?;
            let cond = match &labels {
                Some(l) => Conditioning::labels(l.shallow_clone()),
                None => Conditioning::none(),
            };
            // the forward pass under autocast (bf16 matmuls); the losses below take its
            // output cast back to f32
            let region = autocast.map(|d| lpl_torch_ext::Autocast::enter(device, d)).transpose()?;
            let pred = model
                .forward_t(&z_t, &schedule.model_time(&t_dev)?, &cond, true)
                .map_err(|e| TrainError::Torch(e.to_string()))?
                .to_kind(Kind::Float);
            let target = param.target(&schedule, &z0, &eps, &t_dev)?;
            let mut per_sample =
                (&pred - target).square().flatten(1, -1).mean_dim(1, false, Kind::Float);
            if let Some(gamma) = config.loss.min_snr_gamma {
                per_sample *= min_snr_weights(&schedule, param, &t_dev, gamma)?;
            }
            let mse = per_sample.mean(Kind::Float);
            mse_sum += mse.detach() / accum as f64;
            let mut loss = mse;
            if let Some(lpl) = lpl.as_ref().filter(|l| l.active_at(step)) {
                let x0_hat = x0_from_prediction(&pred, &z_t, &t_dev, param, &schedule)?;
                let _f32 = (region.is_some() && !precision.lpl_decoder_autocast)
                    .then(|| lpl_torch_ext::Autocast::disable(device))
                    .transpose()?;
                let out = lpl.loss(&x0_hat, &z0, &t_cpu, &schedule, param)?;
                loss = &loss + &out.total;
                LplTerms::accumulate(&mut lpl_terms, &out, 1.0 / accum as f64);
            }
            // the mean over micro-batches: gradients add up to those of one batch of
            // batch_size * grad_accum samples
            drop(region); // backward outside the region, as with torch.autocast
            let loss = loss / accum as f64;
            loss_sum += loss.detach().to_kind(Kind::Float);
            loss.backward();
        }
        // A non-finite loss (any micro-batch) or gradient skips the step on the device, as
        // PyTorch's GradScaler does: the fused AdamW kernel leaves everything alone when
        // `found_inf` is 1 and the EMA's weight becomes 0. Counters live on the device too
        // and are read at log intervals: no host synchronisation per step.
        let norm = opt.grad_norm()?;
        let finite = loss_sum.isfinite().logical_and(&norm.isfinite());
        let found_inf = finite.logical_not().to_kind(Kind::Float);
        if let Some(max_norm) = config.optim.grad_clip {
            opt.clip_to(&norm, max_norm)?;
        }
        let lr = config.optim.lr
            * ((step + 1) as f64 / config.optim.warmup_steps.max(1) as f64).min(1.0);
        opt.step_unless(lr, &found_inf)?;
        ema.update_unless(model.var_store(), step, &found_inf)?;
        counters.record(&found_inf, &loss_sum, &mse_sum, &norm, lpl_terms.as_ref());
        step += 1;
        bar.inc(1);
        let checkpoint_now =
            (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || step == total;
        if step.is_multiple_of(t.log_every) || checkpoint_now {
            // the host reads of this interval
            let skipped_now = counters.skipped.double_value(&[]) as usize;
            if skipped_now > skipped {
                tracing::warn!(
                    "{} step(s) with a non-finite loss skipped by step {step}",
                    skipped_now - skipped
                );
                skipped = skipped_now;
            }
            let longest = counters.longest_run.double_value(&[]) as usize;
            if longest >= t.max_nonfinite {
                return Err(TrainError::NonFiniteRun { run: longest, step });
            }
        }
        if step.is_multiple_of(t.log_every) || step == total {
            let sps = (step - first_step) as f64 * (t.batch_size * t.grad_accum.max(1)) as f64
                / started.elapsed().as_secs_f64();
            let (loss, line) = counters.take_window(step, lr, sps)?;
            last_loss = loss;
            metrics.append(&line)?;
            bar.set_message(format!("loss {last_loss:.4} lr {lr:.1e} {sps:.0} samples/s"));
        }
        if checkpoint_now {
            let mut tensors = named(model.var_store(), "model.");
            tensors
                .extend(ema.tensors().iter().map(|(k, v)| (format!("ema.{k}"), v.shallow_clone())));
            tensors.extend(opt.state_tensors());
            let state = RunState {
                step,
                cursor,
                time_sampler_state: time_sampler.state(),
                adamw_step: opt.step_count(),
                config_toml: config_toml.clone(),
                codec_json: codec.to_json(),
            };
            last_checkpoint = Some(run_checkpoint::save(
                &config.output_dir,
                &state,
                tensors,
                t.keep_checkpoints,
            )?);
        }
        if let Some(ev) = evaluator.as_mut()
            && (step.is_multiple_of(ev.config.every) || step == total)
            && checkpoint_now
        {
            let sample = SampleConfig {
                sampler: ev.config.sampler.clone(),
                guidance: ev.config.guidance.clone(),
                count: ev.config.count,
                seed: ev.config.seed,
                every: 0,
            };
            let request = SampleRequest::new(
                model,
                &schedule,
                param,
                cache.manifest.latent_shape,
                &sample,
                device,
            )
            .cycling(cache.manifest.num_classes);
            let images =
                sampling::with_ema_weights(model, &ema, || request.images(ae.as_ref(), &codec))?;
            let m = ev.evaluate(&images, step, last_checkpoint.as_deref())?;
            let line = serde_json::json!({"step": step, "eval": m});
            metrics.append(&line)?;
            tracing::info!("step {step}: {} {:.3} (best {:.3})", m.metric, m.fd, ev.best_fd);
        }
        if let Some(sample) = &config.sample {
            let periodic = sample.every > 0 && step.is_multiple_of(sample.every);
            if periodic || step == total {
                let path = config.output_dir.join("grids").join(format!("step-{step:07}.png"));
                let request = SampleRequest::new(
                    model,
                    &schedule,
                    param,
                    cache.manifest.latent_shape,
                    sample,
                    device,
                )
                .cycling(cache.manifest.num_classes);
                sampling::with_ema_weights(model, &ema, || {
                    request.write_grid(ae.as_ref(), &codec, &path)
                })?;
                grid = Some(path);
            }
        }
    }
    bar.finish();
    let checkpoint = last_checkpoint.ok_or_else(|| invalid("train.steps", "no step was run"))?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        step,
        last_loss,
        checkpoint,
        samples_per_sec: (step - first_step) as f64 * (t.batch_size * t.grad_accum.max(1)) as f64
            / elapsed.max(1e-9),
        grid,
        skipped_steps: skipped,
    })
}

/// The state of `[eval]`: the feature network, the real images' statistics and the best FD.
struct PeriodicEvaluator {
    config: crate::run_config::PeriodicEval,
    net: lpl_metrics::EfficientNetLite0,
    reference: lpl_metrics::RealReference,
    best_fd: f64,
    dir: PathBuf,
}

impl PeriodicEvaluator {
    fn new(
        config: &crate::run_config::PeriodicEval,
        dir: &std::path::Path,
        device: Device,
    ) -> Result<Self> {
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
        let err = |e: lpl_metrics::StatsError| TrainError::Torch(e.to_string());
        let net = lpl_metrics::EfficientNetLite0::from_file(&weights, device).map_err(err)?;
        let test = config.data.open(lpl_data::Split::Test)?;
        let real = lpl_data::preprocess::to_unit_range(
            &test.read(0, (config.count as i64).min(test.len()))?.images,
        )?;
        let reference = lpl_metrics::RealReference::new(&net, &real).map_err(err)?;
        // a resumed run remembers its best so far
        let best_fd = std::fs::read_to_string(dir.join("best.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["fd"].as_f64())
            .unwrap_or(f64::INFINITY);
        Ok(Self { config: config.clone(), net, reference, best_fd, dir: dir.to_path_buf() })
    }

    /// Metrics of `images` (CPU or device, `[0, 1]`); a new best copies `checkpoint` to
    /// `best.safetensors` (atomically) and records it in `best.json`.
    fn evaluate(
        &mut self,
        images: &Tensor,
        step: usize,
        checkpoint: Option<&std::path::Path>,
    ) -> Result<lpl_metrics::ImageMetrics> {
        let (m, _) = self
            .reference
            .compare(&self.net, &images.to_device(Device::Cpu))
            .map_err(|e| TrainError::Torch(e.to_string()))?;
        if m.fd < self.best_fd
            && let Some(ckpt) = checkpoint
        {
            link_atomically(ckpt, &self.dir.join("best.safetensors"))?;
            let io = |e: lpl_tensor_io::TensorIoError| invalid("output_dir", e.to_string());
            let record = serde_json::json!({"step": step, "fd": m.fd, "metric": m.metric, "checkpoint": ckpt});
            lpl_tensor_io::write_atomically(
                &self.dir.join("best.json"),
                record.to_string().as_bytes(),
            )
            .map_err(io)?;
            self.best_fd = m.fd;
        }
        Ok(m)
    }
}

/// Makes `to` another name of the finished checkpoint `from` (a hard link: checkpoints are
/// never modified in place, and pruning `from` later leaves `to` intact), through a temporary
/// name and a rename so `to` is never half there; copies when linking is not possible.
fn link_atomically(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let tmp = to.with_extension(format!("tmp-{}", std::process::id()));
    let io = |e: std::io::Error| {
        invalid("output_dir", format!("{} -> {}: {e}", from.display(), to.display()))
    };
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    }
    std::fs::rename(&tmp, to).map_err(io)
}
