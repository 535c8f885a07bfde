//! `lpl cache`, `lpl train` and `lpl sample`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use lpl_data::{DatasetConfig, Split};
use lpl_schedulers::{NoiseSchedule, SamplerConfig, SamplerKind};
use lpl_trainer::cache_building::CacheConfig;
use lpl_trainer::diffusion_training::{self, Start};
use lpl_trainer::distributed::{DistributedConfig, World};
use lpl_trainer::evaluation::TrainedRun;
use lpl_trainer::run_config::{RunConfig, SampleConfig};
use lpl_trainer::sampling::{self, SampleRequest};

/// Arguments of `lpl cache`: a config file, or the dataset and autoencoder as flags.
#[derive(Args)]
pub struct CacheArgs {
    /// A cache config (TOML: autoencoder, [data], split, flip, shard_size, batch, output_dir).
    #[arg(long, conflicts_with_all = ["ae", "out"])]
    config: Option<PathBuf>,
    /// The autoencoder (diffusers folder, TAESD pair folder or lpl checkpoint).
    #[arg(long, required_unless_present = "config")]
    ae: Option<PathBuf>,
    /// `fashion_mnist`, `folder` or `emoji`.
    #[arg(long, default_value = "fashion_mnist")]
    dataset: String,
    /// Directory of the dataset files (Fashion-MNIST default: the system location).
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// `train` or `test`.
    #[arg(long, default_value = "train")]
    split: String,
    /// Resize folder / emoji images to this square size (ADM center crop).
    #[arg(long)]
    size: Option<u32>,
    /// Zero-pad images to this size (32 for Fashion-MNIST with a 4x autoencoder).
    #[arg(long)]
    pad_to: Option<i64>,
    /// Also cache horizontally flipped images.
    #[arg(long)]
    flip: bool,
    /// Samples per shard.
    #[arg(long, default_value_t = 8192)]
    shard_size: usize,
    /// Output directory.
    #[arg(long, required_unless_present = "config")]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Builds a latent cache.
pub fn cache(args: CacheArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => CacheConfig::from_file(path)?,
        None => {
            let split = match args.split.as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                other => bail!("unknown split `{other}` (train, test)"),
            };
            let mut data = DatasetConfig::fashion_mnist(args.dataset_dir.clone(), args.pad_to);
            data.dataset = args.dataset.clone();
            data.size = args.size;
            data.validate()?;
            CacheConfig {
                autoencoder: args.ae.clone().context("--ae")?,
                data,
                split,
                flip: args.flip,
                shard_size: args.shard_size,
                batch: 256,
                output_dir: args.out.clone().context("--out")?,
            }
        }
    };
    let device = super::parse_device(&args.device)?;
    let m = config.build(device)?;
    println!(
        "cached {} latents {:?} in {} shards -> {} (per-channel std {:?})",
        m.count,
        m.latent_shape,
        m.shards.len(),
        config.output_dir.display(),
        m.channel_std.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>()
    );
    Ok(())
}

/// Arguments of `lpl train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in the output directory.
    #[arg(long, conflicts_with = "init_from")]
    resume: bool,
    /// Start from another run's checkpoint (model and EMA; fresh optimiser).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Override `train.steps`.
    #[arg(long)]
    steps: Option<usize>,
    /// Override `output_dir`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Profile N steps (after one warm-up step) with libtorch's profiler: a Chrome/Perfetto
    /// trace in `<output_dir>/profile/trace.json` (`[log] profile = N`).
    #[arg(long)]
    profile: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Trains a diffusion model.
pub fn train(args: TrainArgs) -> Result<()> {
    let mut config = RunConfig::from_file(&args.config)?;
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    if let Some(out) = args.out {
        config.output_dir = out;
    }
    if args.profile.is_some() {
        config.log.profile = args.profile;
    }
    let start = match (args.resume, args.init_from) {
        (true, _) => Start::Resume,
        (false, Some(path)) => Start::InitFrom(path),
        (false, None) => Start::Fresh,
    };
    let outcome = diffusion_training::train(&config, start, super::parse_device(&args.device)?)?;
    if outcome.rank != 0 {
        return Ok(()); // rank 0 reports for the run
    }
    println!("| step | last loss | samples/s | skipped | checkpoint | grid |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.4} | {:.0} | {} | {} | {} |",
        outcome.step,
        outcome.last_loss,
        outcome.samples_per_sec,
        outcome.skipped_steps,
        outcome.checkpoint.display(),
        outcome.grid.map_or("-".to_string(), |g| g.display().to_string())
    );
    Ok(())
}

/// Sampler, steps, guidance and seed of `lpl sample` and `lpl eval`.
#[derive(Args)]
pub struct SamplingArgs {
    /// ddpm, ddim, euler, heun, dpm_solver_pp_2m, flow_euler, flow_heun (default: ddim, or
    /// flow_euler for flow runs).
    #[arg(long)]
    pub(crate) sampler: Option<String>,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) guidance: f64,
    /// Guide only the first K latent channels (the original DiT's `forward_with_cfg` guides
    /// 3 of 4: `--guidance-channels 3` to match its published FIDs); default all.
    #[arg(long)]
    pub(crate) guidance_channels: Option<i64>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Samples per sampler run (the model sees twice as many under guidance).
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
}

/// How to sample a published model given to `--run` (a diffusers DiT folder or an
/// original DiT `.pt`): what its file does not say.
#[derive(Args)]
pub struct PretrainedArgs {
    /// The autoencoder that decodes a published model's latents (a diffusers folder, e.g.
    /// DiT's sd-vae-ft-ema); needed with a published model, refused with a run (whose
    /// config names its own).
    #[arg(long)]
    pub(crate) ae: Option<PathBuf>,
    /// Attention heads of an original-layout `.pt` (default: DiT's convention).
    #[arg(long)]
    pub(crate) heads: Option<i64>,
    /// The published model's noise schedule (a preset; default DiT's, `dit`).
    #[arg(long)]
    pub(crate) schedule: Option<String>,
    /// What the published model predicts: eps (the default, DiT's), v, x0.
    #[arg(long)]
    pub(crate) parameterization: Option<String>,
}

impl PretrainedArgs {
    /// The run or published model at `path`.
    pub(crate) fn open(&self, path: &std::path::Path, device: tch::Device) -> Result<TrainedRun> {
        if !lpl_trainer::evaluation::is_pretrained(path) {
            let given: Vec<&str> = [
                (self.ae.is_some(), "--ae"),
                (self.heads.is_some(), "--heads"),
                (self.schedule.is_some(), "--schedule"),
                (self.parameterization.is_some(), "--parameterization"),
            ]
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect();
            if !given.is_empty() {
                bail!(
                    "{}: {} is a run, whose config says how to sample it; they are for a published model",
                    given.join(", "),
                    path.display()
                );
            }
            return Ok(TrainedRun::open(path, device)?);
        }
        let ae = self.ae.clone().with_context(|| {
            format!(
                "{} is a published model: give --ae, the autoencoder that decodes its latents (DiT: a diffusers sd-vae-ft-ema folder)",
                path.display()
            )
        })?;
        let mut options = lpl_trainer::evaluation::PretrainedOptions::dit(ae);
        options.heads = self.heads;
        if let Some(name) = &self.parameterization {
            options.parameterization = serde_json::from_value(serde_json::Value::String(
                name.clone(),
            ))
            .with_context(|| format!("--parameterization: unknown `{name}` (eps, v, x0)"))?;
        }
        if let Some(schedule) = &self.schedule {
            options.schedule = schedule.clone();
        }
        Ok(TrainedRun::open_pretrained(path, &options, device)?)
    }
}

/// Arguments of `lpl sample`.
#[derive(Args)]
pub struct SampleArgs {
    /// A run directory (its latest checkpoint is used), a checkpoint file, or a published
    /// model: a diffusers DiT folder (or a pipeline folder with `transformer/`) or an
    /// original DiT `.pt` (then give --ae).
    #[arg(long)]
    run: PathBuf,
    /// A published model's autoencoder, heads, schedule and parameterisation.
    #[command(flatten)]
    pretrained: PretrainedArgs,
    /// Output PNG of the grid.
    #[arg(long, required_unless_present = "npz")]
    out: Option<PathBuf>,
    /// Also (or instead) write the samples as an `.npz` in the layout of ADM's evaluator and
    /// DiT's `sample_ddp.py` (`arr_0`: uint8 N x H x W x 3; `arr_1`: class labels).
    #[arg(long)]
    npz: Option<PathBuf>,
    /// Images.
    #[arg(long, default_value_t = 64)]
    count: usize,
    /// How to sample.
    #[command(flatten)]
    sampling: SamplingArgs,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn parse_sampler(name: Option<&str>, schedule: &NoiseSchedule) -> Result<SamplerKind> {
    Ok(match name {
        None => match schedule {
            NoiseSchedule::Flow(_) => SamplerKind::FlowEuler,
            NoiseSchedule::Discrete(_) => SamplerKind::Ddim,
        },
        Some(name) => serde_json::from_value(serde_json::Value::String(name.to_string()))
            .with_context(|| format!("unknown sampler `{name}`"))?,
    })
}

/// What `--sampler`, `--steps`, `--guidance` and `--seed` ask of `count` samples.
pub(crate) fn sample_config(
    run: &TrainedRun,
    args: &SamplingArgs,
    count: usize,
) -> Result<SampleConfig> {
    let guidance = lpl_schedulers::Guidance {
        channels: args.guidance_channels,
        ..lpl_schedulers::Guidance::new(args.guidance)
    };
    guidance.validate().context("--guidance / --guidance-channels")?;
    Ok(SampleConfig {
        sampler: SamplerConfig::new(
            parse_sampler(args.sampler.as_deref(), &run.schedule)?,
            args.steps,
        ),
        guidance,
        count,
        seed: args.seed,
        every: 0,
    })
}

/// Samples a grid from a run's EMA weights.
pub fn sample(args: SampleArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let run = args.pretrained.open(&args.run, device)?;
    let sample = sample_config(&run, &args.sampling, args.count)?;
    let request = SampleRequest { batch: args.sampling.batch, ..run.request(&sample, device) };
    // launched as several processes (torchrun, Slurm): each samples its share of the
    // batches, the same values a single process computes for them; rank 0 writes
    let world = World::from_env(&DistributedConfig::default(), device)?;
    let latents = request.latents_of_batches(world.share(request.batch_count()))?;
    let gather_dir = |path: &std::path::Path| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    };
    let mut written = Vec::new();
    if let Some(out) = &args.out {
        if let Some(all) = world.gather_rows_to_main(&latents, &gather_dir(out), "latents")? {
            // a grid shows at most 256 samples
            let shown = all.narrow(0, 0, all.size()[0].min(256));
            request.write_grid_of(&sampling::decode(run.ae.as_ref(), &run.codec, &shown)?, out)?;
        }
        written.push(out.display().to_string());
    }
    if let Some(npz) = &args.npz {
        let pixels = sampling::decode_to_uint8(run.ae.as_ref(), &run.codec, &latents)?;
        if let Some(all) = world.gather_rows_to_main(&pixels, &gather_dir(npz), "pixels")? {
            sampling::write_npz_pixels(&all, request.sample_labels().as_ref(), npz)?;
        }
        written.push(npz.display().to_string());
    }
    if !world.is_main() {
        return Ok(());
    }
    println!(
        "{} samples from {} (step {}) -> {}",
        args.count,
        run.checkpoint.display(),
        run.step,
        written.join(", ")
    );
    Ok(())
}

/// Arguments of `lpl ablate`.
#[derive(Args)]
pub struct AblateArgs {
    /// The ablation config (TOML).
    #[arg(long, default_value = "configs/ablate-default.toml")]
    config: PathBuf,
    /// The small smoke version (one seed, the first parameterisation or the one `--only`
    /// names, 5000 images, a few hundred steps).
    #[arg(long)]
    quick: bool,
    /// Only these parameterisations (e.g. `--only eps`; reproduces those rows).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory (default: the config's `output_dir`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Run this many arms at once, each in its own process on `--device` (after the shared
    /// stages: autoencoder, cache, pre-training, calibration). The report is the sequential
    /// run's; on the CPU the processes share the cores (set OMP_NUM_THREADS to split them:
    /// results then equal a sequential run with the same thread count).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Run arms at once, one process per device (`cuda:0,cuda:1,...`); overrides --jobs.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Run this one arm (`eps:0:lpl`) and stop: what each parallel process runs. Launched
    /// as several processes (torchrun, Slurm) the arm trains data-parallel, its batch split
    /// over the ranks (the same training as one process, up to float summation order).
    #[arg(long)]
    arm: Option<String>,
    /// Run the stages the arms share (autoencoder, cache, ceiling, pre-training,
    /// calibration), list the arms and stop: then run arms one by one with --arm.
    #[arg(long, conflicts_with = "arm")]
    prepare: bool,
}

/// Runs `keys` as `lpl ablate ... --arm KEY --device D` processes, one per entry of
/// `slots` at a time, each logging to `<output_dir>/logs/<arm>.log`.
fn run_arms_in_parallel(
    args: &AblateArgs,
    out: &std::path::Path,
    keys: &[lpl_ablation::ArmKey],
    slots: &[String],
) -> Result<()> {
    let exe = std::env::current_exe().context("the path of this executable")?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let mut queue: std::collections::VecDeque<&lpl_ablation::ArmKey> = keys.iter().collect();
    let mut running: Vec<Option<(std::process::Child, String, PathBuf)>> =
        slots.iter().map(|_| None).collect();
    let bar = lpl_trainer::progress::bar(keys.len() as u64, "arms");
    loop {
        for (slot, device) in running.iter_mut().zip(slots) {
            if let Some((child, key, log)) = slot {
                let failure = match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) if status.success() => None,
                    Ok(Some(status)) => Some(status.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = failure {
                    let message = format!("arm {key} failed ({why}); its log: {}", log.display());
                    // no arm left running behind our back (a relaunch would race with it)
                    for (other, _, _) in running.iter_mut().flatten() {
                        let _ = other.kill();
                        let _ = other.wait();
                    }
                    bail!(message);
                }
                bar.inc(1);
                *slot = None;
            }
            let Some(key) = queue.pop_front() else { continue };
            let log = logs.join(format!("{}.log", key.to_string().replace(':', "-")));
            let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["ablate", "--config"]).arg(&args.config);
            if args.quick {
                cmd.arg("--quick");
            }
            if let Some(o) = &args.out {
                cmd.arg("--out").arg(o);
            }
            if !args.only.is_empty() {
                cmd.arg("--only").arg(args.only.join(","));
            }
            cmd.args(["--arm", &key.to_string(), "--device", device])
                .stdin(std::process::Stdio::null())
                .stdout(file.try_clone().with_context(|| log.display().to_string())?)
                .stderr(file);
            bar.set_message(format!("{key} on {device}"));
            let child = cmd.spawn().with_context(|| format!("starting arm {key}"))?;
            *slot = Some((child, key.to_string(), log));
        }
        if queue.is_empty() && running.iter().all(Option::is_none) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    Ok(())
}

/// Runs (or resumes) an ablation and prints its table.
pub fn ablate(args: AblateArgs) -> Result<()> {
    let mut config = lpl_ablation::AblationConfig::from_file(&args.config)?;
    if !args.only.is_empty() {
        let keep = args
            .only
            .iter()
            .map(|p| {
                serde_json::from_value(serde_json::Value::String(p.clone())).with_context(|| {
                    format!("--only: unknown parameterisation `{p}` (eps, v, flow)")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        config = config.only(&keep)?;
    }
    // after `--only`, so that `--quick --only v` is the quick run of v
    if args.quick {
        config = config.quick();
    }
    if let Some(out) = &args.out {
        config.output_dir = out.clone();
    }
    let command = format!(
        "cargo xtask ablate --config {}{}{}",
        args.config.display(),
        if args.quick { " --quick" } else { "" },
        args.out.as_ref().map(|o| format!(" --out {}", o.display())).unwrap_or_default()
    );
    let device = super::parse_device(&args.device)?;
    if let Some(arm) = &args.arm {
        // launched as several processes (torchrun, Slurm), the arm trains data-parallel
        let key: lpl_ablation::ArmKey = arm.parse()?;
        return Ok(lpl_ablation::run_arm(&config, &key, device)?);
    }
    if let Some(launch) = lpl_trainer::distributed::Launch::from_env()? {
        bail!(
            "`lpl ablate` was launched as {} processes: launch one arm data-parallel \
             (`torchrun ... lpl ablate --arm eps:0:lpl` after `lpl ablate --prepare`), or run \
             arms side by side with --jobs / --devices",
            launch.world_size
        );
    }
    if args.prepare {
        let keys = lpl_ablation::prepare_arms(&config, device)?;
        println!(
            "{} arms ready (run each with --arm, then `lpl ablate` for the report):",
            keys.len()
        );
        for key in keys {
            println!("{key}");
        }
        return Ok(());
    }
    let slots = if !args.devices.is_empty() {
        for d in &args.devices {
            super::parse_device(d).with_context(|| format!("--devices: `{d}`"))?;
        }
        args.devices.clone()
    } else {
        vec![args.device.clone(); args.jobs.max(1)]
    };
    if slots.len() > 1 {
        let keys = lpl_ablation::prepare_arms(&config, device)?;
        run_arms_in_parallel(&args, &config.output_dir, &keys, &slots)?;
    }
    // sequential, or collecting what the parallel arms left (each arm's run and eval.json)
    lpl_ablation::run_ablation(&config, &command, device)?;
    println!("report: {}", config.output_dir.join(format!("{}.md", config.report_name)).display());
    Ok(())
}
