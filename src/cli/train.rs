//! `lpl cache`, `lpl train` and `lpl sample`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use lpl_data::{FashionMnist, LatentCache, Split};
use lpl_schedulers::{NoiseSchedule, SamplerConfig, SamplerKind};
use lpl_trainer::cache_building::{CacheOptions, build_cache};
use lpl_trainer::diffusion_training::{self, Start};
use lpl_trainer::run_checkpoint;
use lpl_trainer::run_config::{RunConfig, SampleConfig};
use tch::Kind;

/// Arguments of `lpl cache`.
#[derive(Args)]
pub struct CacheArgs {
    /// The autoencoder (diffusers folder, TAESD pair folder or lpl checkpoint).
    #[arg(long)]
    ae: PathBuf,
    /// Only `fashion_mnist` for now.
    #[arg(long, default_value = "fashion_mnist")]
    dataset: String,
    /// Directory of the dataset files (default: the system location).
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// `train` or `test`.
    #[arg(long, default_value = "train")]
    split: String,
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
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Builds a latent cache.
pub fn cache(args: CacheArgs) -> Result<()> {
    if args.dataset != "fashion_mnist" {
        bail!("unknown dataset `{}` (only fashion_mnist for now)", args.dataset);
    }
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        other => bail!("unknown split `{other}` (train, test)"),
    };
    let device = super::parse_device(&args.device)?;
    let mut ae = lpl_autoencoder::open(&args.ae, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let data = FashionMnist::load(args.dataset_dir.as_deref(), split)?;
    let options = CacheOptions {
        pad_to: args.pad_to,
        shard_size: args.shard_size,
        batch: 256,
        flip: args.flip,
        num_classes: Some(data.num_classes),
        autoencoder_name: args.ae.display().to_string(),
    };
    let m =
        build_cache(ae.as_ref(), &data.images, Some(&data.labels), &options, &args.out, device)?;
    println!(
        "cached {} latents {:?} in {} shards -> {} (per-channel std {:?})",
        m.count,
        m.latent_shape,
        m.shards.len(),
        args.out.display(),
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
    let start = match (args.resume, args.init_from) {
        (true, _) => Start::Resume,
        (false, Some(path)) => Start::InitFrom(path),
        (false, None) => Start::Fresh,
    };
    let outcome = diffusion_training::train(&config, start, super::parse_device(&args.device)?)?;
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

/// Arguments of `lpl sample`.
#[derive(Args)]
pub struct SampleArgs {
    /// A run directory (its latest checkpoint is used) or a checkpoint file.
    #[arg(long)]
    run: PathBuf,
    /// Output PNG of the grid.
    #[arg(long)]
    out: PathBuf,
    /// Images.
    #[arg(long, default_value_t = 64)]
    count: usize,
    /// ddpm, ddim, euler, heun, dpm_solver_pp_2m, flow_euler, flow_heun.
    #[arg(long)]
    sampler: Option<String>,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Samples a grid from a run's EMA weights.
pub fn sample(args: SampleArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let ckpt = if args.run.is_dir() {
        run_checkpoint::list_checkpoints(&args.run)
            .last()
            .cloned()
            .with_context(|| format!("no checkpoint in {}", args.run.display()))?
    } else {
        args.run.clone()
    };
    let (state, tensors) = run_checkpoint::load(&ckpt)?;
    let config = RunConfig::from_toml(&state.config_toml, &ckpt)?;
    let cache = LatentCache::open(&config.data.cache).context("opening the run's latent cache")?;
    let ae = diffusion_training::open_autoencoder(&config, device)?;
    let codec = lpl_autoencoder::LatentCodec::from_json(&state.codec_json)?;
    let model = diffusion_training::build_model(
        &config,
        cache.manifest.latent_shape,
        cache.manifest.num_classes,
        device,
    )?;
    lpl_tensor_io::load_into(
        model.var_store(),
        &run_checkpoint::strip_prefix(&tensors, "ema."),
        &ckpt,
    )?;
    let schedule = NoiseSchedule::new(&config.diffusion.schedule()?)?.to_device(device);
    let param = config.diffusion.parameterization;
    let kind = match args.sampler.as_deref() {
        None => match schedule {
            NoiseSchedule::Flow(_) => SamplerKind::FlowEuler,
            NoiseSchedule::Discrete(_) => SamplerKind::Ddim,
        },
        Some(name) => serde_json::from_value(serde_json::Value::String(name.to_string()))
            .with_context(|| format!("unknown sampler `{name}`"))?,
    };
    let sample = SampleConfig {
        sampler: SamplerConfig::new(kind, args.steps),
        guidance: lpl_schedulers::Guidance::new(args.guidance),
        count: args.count,
        seed: args.seed,
        every: 0,
    };
    let n = args.count as i64;
    let classes = cache.manifest.num_classes;
    let labels =
        classes.map(|k| tch::Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(k));
    let latents = lpl_trainer::sampling::sample_latents(
        model.as_ref(),
        &schedule,
        param,
        &sample,
        labels.as_ref(),
        &cache.manifest.latent_shape,
        n,
        device,
    )?;
    let images = lpl_trainer::sampling::decode(ae.as_ref(), &codec, &latents)?;
    let grid = lpl_metrics::grid::make_grid(&images, classes.unwrap_or(8), 2);
    lpl_data::folder::write_png(&grid, &args.out)?;
    println!(
        "{} samples from {} (step {}) -> {}",
        n,
        ckpt.display(),
        state.step,
        args.out.display()
    );
    Ok(())
}
