//! The diffusion training loop: an [`Objective`] (MSE, MSE + LPL, MSE + pixel, or a user's)
//! minimised by AdamW with warm-up and clipping, EMA, and the collaborators of
//! [`crate::training_hooks`] after each step (JSONL metrics, atomic checkpoints with exact
//! resume, periodic evaluation, sample grids, user hooks).
//!
//! Determinism: the data order comes from `(seed, epoch)`, t from a host generator whose
//! state is checkpointed, and libtorch's generator (noise, label dropout, flips) is reseeded
//! from `(seed, step)` at every step; so a resumed run repeats the uninterrupted one exactly.

use std::path::PathBuf;
use std::sync::Arc;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_data::{BatchCursor, CacheBatches, LatentCache};
use lpl_denoiser::{Conditioning, Denoiser};
use lpl_schedulers::{NoiseSchedule, TimeSampler};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

use crate::adamw::AdamW;
use crate::distributed::World;
use crate::ema::Ema;
use crate::error::{Result, TrainError, invalid};
use crate::objective::{self, MicroBatch, Objective, Share};
use crate::run_checkpoint::{self, RunState};
use crate::run_config::RunConfig;
use crate::step_log::StepTerms;
use crate::tensorboard::TensorBoardLogger;
use crate::training_hooks::{
    Checkpointer, GridWriter, Hook, PeriodicEvaluator, SampleContext, StepEnd, StepLog,
    StepProfiler, StepValues,
};

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
    /// This process's rank (0 in a single process; only rank 0 reports).
    pub rank: usize,
    /// Non-finite steps skipped.
    pub skipped_steps: usize,
}

/// Builds the configured denoiser (built-in or registered: [`crate::registry`]) for
/// latents `(C, h, w)` and `classes` classes, initialised from the run's seed.
pub fn build_model(
    config: &RunConfig,
    latent_shape: [i64; 3],
    classes: Option<i64>,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    crate::registry::build(&config.model, latent_shape, classes, config.train.seed, device)
}

fn step_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        as i64
        & i64::MAX
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
    train_with_objective(config, model, start, device, &mut [], |ae, codec| {
        objective::from_config(&config.loss, &config.precision, ae, codec)
    })
}

/// The data, autoencoder and schedule of a run, checked against each other.
struct RunInputs {
    cache: Arc<LatentCache>,
    ae: Box<dyn Autoencoder>,
    codec: LatentCodec,
    schedule: NoiseSchedule,
}

impl RunInputs {
    fn open(config: &RunConfig, model: &dyn Denoiser, device: Device) -> Result<Self> {
        let cache = LatentCache::open(&config.data.cache)?;
        let ae = open_autoencoder(config, device)?;
        let codec: LatentCodec = cache.manifest.codec.clone();
        cache.check_autoencoder(&ae.fingerprint()?, &codec)?;
        let channels = cache.manifest.latent_shape[0];
        if model.in_channels() != channels
            || ![channels, 2 * channels].contains(&model.out_channels())
        {
            return Err(invalid(
                "model",
                format!(
                    "the denoiser maps {} to {} channels, the cache holds {channels} (out: {channels}, or {} with a learned variance)",
                    model.in_channels(),
                    model.out_channels(),
                    2 * channels
                ),
            ));
        }
        if config.data.flip && !cache.manifest.flipped {
            return Err(invalid(
                "data.flip",
                format!(
                    "the latent cache {} holds no flipped copies: rebuild it with `flip = true`, or set data.flip = false",
                    config.data.cache.display()
                ),
            ));
        }
        let schedule = NoiseSchedule::new(&config.diffusion.schedule()?)?.to_device(device);
        Ok(Self { cache: Arc::new(cache), ae, codec, schedule })
    }
}

/// [`train_model`] minimising the objective that `objective` builds over the run's frozen
/// autoencoder (see [`crate::objective`]), with `hooks` called after every step.
pub fn train_with_objective<F>(
    config: &RunConfig,
    model: &dyn Denoiser,
    start: Start,
    device: Device,
    hooks: &mut [&mut dyn Hook],
    objective: F,
) -> Result<TrainOutcome>
where
    F: for<'a> FnOnce(&'a dyn Autoencoder, &'a LatentCodec) -> Result<Box<dyn Objective + 'a>>,
{
    config.validate()?;
    let weights_on = model.var_store().device();
    if weights_on != device {
        return Err(invalid(
            "model",
            format!("the denoiser's weights are on {weights_on:?}, training runs on {device:?}"),
        ));
    }
    // every step reseeds libtorch's global generator: hold it for the whole run
    let _rng = GlobalRng::lock();
    // one of several processes when launched so (torchrun, Slurm): data-parallel
    let world = World::from_env(&config.distributed, device)?;
    let inputs = RunInputs::open(config, model, device)?;
    let ae: &dyn Autoencoder = inputs.ae.as_ref();
    let mut objective = objective(ae, &inputs.codec)?;
    if model.out_channels() == 2 * model.in_channels() {
        objective = Box::new(objective::LearnedVariance::new(objective, &inputs.schedule, device)?);
    }
    if device.is_cuda() {
        lpl_torch_ext::tf32::set(config.precision.tf32)?;
    }
    // identical initial weights on every rank, as torch DDP makes them (a resumed or
    // initialised run then loads the same file everywhere)
    let mut variables: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    world.broadcast_from_main(&variables.iter().map(|(_, v)| v.detach()).collect::<Vec<_>>())?;
    let mut state = TrainState::start(config, model, &start)?;
    if world.is_main() {
        std::fs::create_dir_all(&config.output_dir)
            .map_err(|e| TrainError::Io { path: config.output_dir.clone(), source: e })?;
        // what a killed run was writing when it died (never published: the renames did not
        // happen)
        for dir in [config.output_dir.clone(), run_checkpoint::checkpoint_dir(&config.output_dir)] {
            for stale in lpl_tensor_io::remove_stale_temporaries(&dir) {
                tracing::info!("removed {}, left by an interrupted write", stale.display());
            }
        }
    }
    // the others start once rank 0 has cleaned up
    world.barrier()?;
    let manifest = &inputs.cache.manifest;
    let ctx = SampleContext {
        ae,
        codec: &inputs.codec,
        schedule: &inputs.schedule,
        parameterization: config.diffusion.parameterization,
        latent_shape: manifest.latent_shape,
        classes: manifest.num_classes,
        device,
    };
    let main = world.is_main();
    let mut log = StepLog::open(config, state.step, device, &world)?;
    let mut checkpointer = Checkpointer::new(config, &inputs.codec, world.size())?;
    // evaluation: sampled by every rank, judged by rank 0; grids, TensorBoard, profiles and
    // user hooks: rank 0's
    let mut evaluator = config
        .eval
        .as_ref()
        .map(|e| PeriodicEvaluator::new(e, &config.output_dir, device, main))
        .transpose()?;
    let mut grids = GridWriter::new(config).filter(|_| main);
    let mut tensorboard = (config.log.tensorboard && main)
        .then(|| TensorBoardLogger::create(&config.output_dir.join("tensorboard")))
        .transpose()?;
    let t = &config.train;
    // each rank reads its rows of the one global order of batches of world x batch_size
    let mut batches = CacheBatches::new(
        inputs.cache.clone(),
        t.batch_size * world.size(),
        t.seed,
        config.data.flip,
        state.cursor,
    )?
    .sharded(world.rank(), world.size())?
    .prefetch(PREFETCH_BATCHES);
    let mut profiler = StepProfiler::new(config, state.step, device).filter(|_| main);
    while state.step < t.steps {
        if let Some(p) = profiler.as_mut() {
            p.before_step(state.step)?;
        }
        let values = state.step(
            config,
            model,
            objective.as_ref(),
            &mut batches,
            &inputs.schedule,
            &world,
        )?;
        if let Some(p) = profiler.as_mut() {
            p.after_step(state.step, state.step == t.steps)?;
        }
        let checkpointed = Checkpointer::due(config, state.step);
        let line = log.record(state.step, t.steps, checkpointed, &values)?;
        if checkpointed {
            if main {
                checkpointer.save(config, model, &state.ema, &state.opt, state.run_state())?;
            }
            // no rank runs ahead of a checkpoint being written (a relaunch resumes from it)
            world.barrier()?;
            if !main {
                checkpointer.last =
                    Some(run_checkpoint::checkpoint_path(&config.output_dir, state.step));
            }
        }
        let mut lines: Vec<serde_json::Value> = line.into_iter().collect();
        let end = StepEnd {
            step: state.step,
            total: t.steps,
            model,
            ema: &state.ema,
            checkpoint: checkpointer.last.as_deref(),
            checkpointed,
            grid: None,
        };
        if let Some(eval) =
            evaluator.as_mut().map(|e| e.after_step(&end, &ctx, &world)).transpose()?.flatten()
        {
            log.append(&eval)?;
            lines.push(eval);
        }
        let grid = grids.as_mut().map(|g| g.after_step(&end, &ctx)).transpose()?.flatten();
        let end = StepEnd { grid: grid.as_deref(), ..end };
        for hook in hooks.iter_mut().filter(|_| main) {
            hook.after_step(&end, &lines)?;
        }
        if let Some(tb) = tensorboard.as_mut() {
            tb.after_step(&end, &lines)?;
        }
    }
    log.finish();
    Ok(TrainOutcome {
        step: state.step,
        last_loss: log.last_loss,
        checkpoint: checkpointer.last.ok_or_else(|| invalid("train.steps", "no step was run"))?,
        samples_per_sec: log.samples_per_sec(state.step),
        grid: grids.and_then(|g| g.last),
        skipped_steps: log.skipped,
        rank: world.rank(),
    })
}

/// The optimiser, EMA, time sampler and data position of a run: what a checkpoint restores.
struct TrainState {
    opt: AdamW,
    ema: Ema,
    time_sampler: TimeSampler,
    cursor: BatchCursor,
    step: usize,
}

impl TrainState {
    /// A fresh state, or one restored as `start` says.
    fn start(config: &RunConfig, model: &dyn Denoiser, start: &Start) -> Result<Self> {
        let mut s = Self {
            opt: AdamW::new(model.var_store(), config.optim.adamw())?,
            ema: Ema::new(model.var_store(), config.ema.clone())?,
            time_sampler: TimeSampler::new(
                config.diffusion.time_sampling.clone(),
                config.train.seed,
            )?,
            cursor: BatchCursor::default(),
            step: 0,
        };
        let existing = run_checkpoint::list_checkpoints(&config.output_dir);
        let out = config.output_dir.display();
        match start {
            Start::Fresh if !existing.is_empty() => Err(invalid(
                "output_dir",
                format!(
                    "{out} already holds checkpoints: pass --resume or choose another output_dir"
                ),
            )),
            Start::Fresh => Ok(s),
            Start::Resume => {
                // the newest checkpoint that verifies; damaged newer ones are skipped, named
                let (latest, state, tensors) =
                    run_checkpoint::load_latest_valid(&config.output_dir)?.ok_or_else(|| {
                        invalid("output_dir", format!("--resume: no checkpoint in {out}"))
                    })?;
                let latest = &latest;
                s.load_tensors(model, &tensors, latest)?;
                s.opt.load_state(&tensors, state.adamw_step)?;
                s.time_sampler = TimeSampler::with_state(
                    config.diffusion.time_sampling.clone(),
                    state.time_sampler_state,
                )?;
                s.cursor = state.cursor;
                s.step = state.step;
                tracing::info!("resumed {} at step {}", latest.display(), s.step);
                Ok(s)
            }
            Start::InitFrom(path) if crate::evaluation::is_pretrained(path) => Err(invalid(
                "--init-from",
                format!(
                    "{} is a published model, not an lpl checkpoint: set `[model] pretrained = \"{}\"` (with kind = \"dit\" and no preset: its architecture comes from the file)",
                    path.display(),
                    path.display()
                ),
            )),
            Start::InitFrom(path) => {
                s.load_weights(model, path)?;
                tracing::info!("initialised from {}", path.display());
                Ok(s)
            }
        }
    }

    /// Loads the model's and the EMA's weights of checkpoint `path`; returns its state.
    fn load_weights(&mut self, model: &dyn Denoiser, path: &std::path::Path) -> Result<RunState> {
        let (state, tensors) = run_checkpoint::load(path)?;
        self.load_tensors(model, &tensors, path)?;
        Ok(state)
    }

    /// The model's and the EMA's weights from a checkpoint's `tensors` (read from `path`).
    fn load_tensors(
        &mut self,
        model: &dyn Denoiser,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        path: &std::path::Path,
    ) -> Result<()> {
        lpl_tensor_io::load_into(
            model.var_store(),
            &run_checkpoint::strip_prefix(tensors, "model."),
            path,
        )?;
        self.ema.load(tensors, "ema.")
    }

    /// What a checkpoint stores of this state (config, codec and world size filled in by
    /// the checkpointer).
    fn run_state(&self) -> RunState {
        RunState {
            step: self.step,
            cursor: self.cursor,
            time_sampler_state: self.time_sampler.state(),
            adamw_step: self.opt.step_count(),
            config_toml: String::new(),
            codec_json: String::new(),
            world_size: 1,
        }
    }

    /// One optimiser step over `grad_accum` micro-batches. A non-finite loss (any
    /// micro-batch) or gradient skips the step on the device, as PyTorch's GradScaler does:
    /// the fused AdamW kernel leaves everything alone when `found_inf` is 1 and the EMA's
    /// weight becomes 0. Nothing is read back to the host.
    fn step(
        &mut self,
        config: &RunConfig,
        model: &dyn Denoiser,
        objective: &dyn Objective,
        batches: &mut impl Iterator<Item = lpl_data::Result<(lpl_data::LatentBatch, BatchCursor)>>,
        schedule: &NoiseSchedule,
        world: &World,
    ) -> Result<StepValues> {
        // where the weights are (checked against the run's device at the start)
        let device = model.var_store().device();
        tch::manual_seed(step_seed(config.train.seed, self.step));
        // every rank draws the whole global micro-batch's noise, time steps and label
        // dropout and keeps its rows: a sample trains the same way whatever the split
        let (rank, ranks) = (world.rank() as i64, world.size() as i64);
        self.opt.zero_grad();
        let accum = config.train.grad_accum.max(1);
        let autocast = config.precision.compute.autocast();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut terms = StepTerms::default();
        for _micro in 0..accum {
            let (batch, cursor) = batches
                .next()
                .ok_or_else(|| invalid("data.cache", "the batch reader stopped"))??;
            self.cursor = cursor;
            let z0 = batch.latents.to_device(device);
            let cond = match &batch.labels {
                Some(l) => Conditioning::labels(l.to_device(device)),
                None => Conditioning::none(),
            };
            let b = batch.indices.len() as i64;
            let rows =
                |global: Tensor| if ranks == 1 { global } else { global.narrow(0, rank * b, b) };
            let t_global = self.time_sampler.sample(schedule, (b * ranks) as usize, Device::Cpu)?;
            let t_cpu = rows(t_global.shallow_clone());
            let t_dev = t_cpu.to_device(device);
            let mut shape = z0.size();
            shape[0] = b * ranks;
            let eps = rows(Tensor::randn(&shape, (z0.kind(), device)));
            let cond = match cond.labels.is_some() {
                // drawn here, right after the noise, where the model's forward would draw them
                true => {
                    cond.with_dropout_draws(rows(Tensor::rand([b * ranks], (Kind::Float, device))))
                }
                false => cond,
            };
            let z_t = schedule.add_noise(&z0, &eps, &t_dev)?;
            // the forward pass and the objective under autocast (bf16 matmuls); the
            // objective takes the prediction cast back to f32; backward outside the region
            let region = autocast.map(|d| lpl_torch_ext::Autocast::enter(device, d)).transpose()?;
            let pred = model
                .forward_t(&z_t, &schedule.model_time(&t_dev)?, &cond, true)?
                .to_kind(Kind::Float);
            let micro = MicroBatch {
                pred: &pred,
                z0: &z0,
                eps: &eps,
                z_t: &z_t,
                t: &t_dev,
                t_cpu: &t_cpu,
                schedule,
                parameterization: config.diffusion.parameterization,
                step: self.step,
                device,
                autocast: region.is_some(),
                share: Share { t_cpu_global: &t_global, world: world.size() },
            };
            let out = objective.loss(&micro)?;
            drop(region);
            terms.accumulate(&out.terms, 1.0 / accum as f64);
            // the mean over micro-batches: gradients add up to those of one batch of
            // batch_size * grad_accum samples
            loss_sum += out.total.detach().to_kind(Kind::Float) / accum as f64;
            (out.backward.unwrap_or(out.total) / accum as f64).backward();
        }
        // torch DDP's gradient average (bucketed), and the loss and logged terms averaged so
        // that every rank takes the same non-finite decision and rank 0 logs the global ones
        world.average_gradients(&self.opt.grads())?;
        if world.size() > 1 {
            let mut values = vec![loss_sum.shallow_clone()];
            values.extend(terms.0.values().map(Tensor::shallow_clone));
            world.average(&values)?;
        }
        let norm = self.opt.grad_norm()?;
        let found_inf =
            loss_sum.isfinite().logical_and(&norm.isfinite()).logical_not().to_kind(Kind::Float);
        if let Some(max_norm) = config.optim.grad_clip {
            self.opt.clip_to(&norm, max_norm)?;
        }
        let lr = config.optim.lr
            * ((self.step + 1) as f64 / config.optim.warmup_steps.max(1) as f64).min(1.0);
        self.opt.step_unless(lr, &found_inf)?;
        self.ema.update_unless(model.var_store(), self.step, &found_inf)?;
        self.step += 1;
        Ok(StepValues { lr, found_inf, loss: loss_sum, grad_norm: norm, terms })
    }
}
