//! `lpl eval`: metrics of generated against real images, printed as a table and JSON.
//! Generated images come from a run (`--run`: sampled from its EMA weights) or a folder
//! (`--fake`); real ones from a folder, a latent cache (decoded with the autoencoder its
//! manifest names) or a dataset (`fashion_mnist`, `fashion_mnist:train`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use lpl_data::folder::{ReadOptions, read_folder};
use lpl_data::{FashionMnist, LatentCache, Split, preprocess};
use lpl_metrics::comparison::{FEATURE_BATCH, ImageMetrics, RealReference};
use lpl_metrics::features::extract_features;
use lpl_metrics::frechet::{GaussianStats, StatsAccumulator, frechet_distance};
use lpl_metrics::{EfficientNetLite0, FeatureExtractor, FidInceptionV3};
use lpl_trainer::distributed::{DistributedConfig, World};
use tch::{Device, Kind, Tensor};

use super::train::{PretrainedArgs, SamplingArgs, sample_config};

/// Arguments of `lpl eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint), a checkpoint file or a published model (a
    /// diffusers DiT folder or an original DiT `.pt`, with --ae) to sample from.
    #[arg(long, required_unless_present = "fake", conflicts_with = "fake")]
    run: Option<PathBuf>,
    /// A published model's autoencoder, heads, schedule and parameterisation.
    #[command(flatten)]
    pretrained: PretrainedArgs,
    /// A folder of generated images, or an `.npz` of them in ADM's layout (instead of --run).
    #[arg(long)]
    fake: Option<PathBuf>,
    /// Real images: a folder, an `.npz` in ADM's layout (`arr_0` images and/or `mu`/`sigma`
    /// statistics, as ADM's reference batches hold them: the FD then uses the stored
    /// statistics, which must come from the same feature network), a latent cache directory,
    /// `fashion_mnist` (test split) or `fashion_mnist:train`.
    #[arg(long, default_value = "fashion_mnist")]
    real: String,
    /// Write the real side's statistics (`mu`, `sigma` in the chosen features) here, as
    /// `.npz` (ADM's and pytorch-fid's layout) or safetensors, for a later `--real`.
    #[arg(long)]
    save_real_stats: Option<PathBuf>,
    /// Images per side (the first `count` of each).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Feature network: `effnet` (FD-EffNet, EfficientNet-Lite0) or `inception` (FID, needs
    /// --inception-weights).
    #[arg(long, default_value = "effnet")]
    features: String,
    /// EfficientNet-Lite0 weights (default: $LPL_HOME/assets/efficientnet-lite0.pth).
    #[arg(long)]
    effnet: Option<PathBuf>,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth).
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// Write the two power spectra as a PNG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Directory of the Fashion-MNIST files (default: the system location).
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// How to sample (with --run).
    #[command(flatten)]
    sampling: SamplingArgs,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn feature_network(args: &EvalArgs, device: Device) -> Result<Box<dyn FeatureExtractor>> {
    Ok(match args.features.as_str() {
        "effnet" => {
            let weights = match args
                .effnet
                .clone()
                .or_else(lpl_trainer::evaluation::default_effnet_weights)
            {
                Some(p) if p.is_file() => p,
                other => bail!(
                    "EfficientNet-Lite0 weights not found ({}); `cargo xtask test` converts them, or pass --effnet",
                    other.map_or("no LPL_HOME".to_string(), |p| p.display().to_string())
                ),
            };
            Box::new(EfficientNetLite0::from_file(&weights, device)?)
        }
        "inception" => {
            let weights = args.inception_weights.as_ref().context(
                "--features inception needs --inception-weights (pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth, from its GitHub releases)",
            )?;
            Box::new(FidInceptionV3::from_file(weights, device)?)
        }
        other => bail!("--features: unknown `{other}` (effnet, inception)"),
    })
}

/// The first `count` images of an ADM-layout `.npz` (`arr_0`: uint8 `(N, H, W, C)`, as
/// `lpl sample --npz`, ADM's and DiT's samplers write them) as `(N, C, H, W)` in `[0, 1]`.
fn npz_images(path: &std::path::Path, count: usize) -> Result<Tensor> {
    npz_images_of(&lpl_tensor_io::npz::read_npz(path)?, path, count)
}

/// [`npz_images`] of the arrays read from `path`.
fn npz_images_of(
    arrays: &std::collections::BTreeMap<String, Tensor>,
    path: &std::path::Path,
    count: usize,
) -> Result<Tensor> {
    let Some(images) = arrays.get("arr_0") else {
        bail!(
            "{}: no `arr_0` (images, uint8 N x H x W x C) nor `mu`/`sigma` statistics; it holds {:?}",
            path.display(),
            arrays.keys().collect::<Vec<_>>()
        );
    };
    if images.kind() != Kind::Uint8 || images.dim() != 4 || ![1, 3].contains(&images.size()[3]) {
        bail!(
            "{}: `arr_0` is {:?} {:?}; expected uint8 N x H x W x C with C = 1 or 3 (ADM layout)",
            path.display(),
            images.kind(),
            images.size()
        );
    }
    let k = (count as i64).min(images.size()[0]);
    // contiguous NCHW, as images read from folders are (strides pick the kernels)
    Ok(preprocess::to_unit_range(&images.narrow(0, 0, k).permute([0, 3, 1, 2]).contiguous())?)
}

/// Real images `(N, C, H, W)` in `[0, 1]`, at most `count`.
fn real_images(args: &EvalArgs, channels: u32, device: Device) -> Result<Tensor> {
    let n = args.count as i64;
    let dataset = |split| -> Result<Tensor> {
        let data = FashionMnist::load(args.dataset_dir.as_deref(), split)?;
        let k = n.min(data.images.size()[0]);
        Ok(preprocess::to_unit_range(&data.images.narrow(0, 0, k))?)
    };
    let path = PathBuf::from(&args.real);
    Ok(match args.real.as_str() {
        "fashion_mnist" | "fashion_mnist:test" => dataset(Split::Test)?,
        "fashion_mnist:train" => dataset(Split::Train)?,
        _ if path.extension().is_some_and(|e| e == "npz") => npz_images(&path, args.count)?,
        _ if path.join("manifest.json").is_file() => {
            let cache = LatentCache::open(&path)?;
            let ae_path = PathBuf::from(&cache.manifest.autoencoder);
            let ae = lpl_autoencoder::open(&ae_path, device, Kind::Float).with_context(|| {
                format!("opening the cache's autoencoder {} (from its manifest)", ae_path.display())
            })?;
            let fingerprint = ae.fingerprint()?;
            cache.check_autoencoder(&fingerprint, &cache.manifest.codec)?;
            let k = n.min(cache.len());
            let latents = cache.gather(&(0..k).collect::<Vec<_>>(), &[])?.latents;
            lpl_trainer::sampling::decode(ae.as_ref(), &cache.manifest.codec, &latents)?
        }
        _ if path.is_dir() => {
            let read = read_folder(&path, &ReadOptions::new(channels))?;
            let k = n.min(read.images.size()[0]);
            preprocess::to_unit_range(&read.images.narrow(0, 0, k))?
        }
        other => bail!(
            "--real `{other}`: not a folder, an .npz, a latent cache or a dataset name (fashion_mnist, fashion_mnist:train)"
        ),
    })
}

/// Brings `real` to the size of `fake`: zero padding when it is smaller (Fashion-MNIST's
/// 28 -> 32), antialiased bilinear resizing otherwise.
fn match_size(real: Tensor, fake: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = real.size4()?;
    let (_, _, fh, fw) = fake.size4()?;
    Ok(if (h, w) == (fh, fw) {
        real
    } else if h <= fh && w <= fw && fh == fw {
        preprocess::pad_to(&real, fh)?
    } else {
        real.upsample_bilinear2d([fh, fw], false, None, None)
    })
}

/// `real` brought to the size and channels of `fake` (grey against RGB compares in RGB).
fn same_layout(real: Tensor, fake: Tensor) -> Result<(Tensor, Tensor)> {
    let real = match_size(real.to_device(Device::Cpu), &fake)?;
    let rgb = |t: Tensor| if t.size()[1] == 1 { t.repeat([1, 3, 1, 1]) } else { t };
    Ok(if real.size()[1] != fake.size()[1] { (rgb(real), rgb(fake)) } else { (real, fake) })
}

/// The Frechet distance of `fake`'s features to stored statistics.
fn frechet_to(net: &dyn FeatureExtractor, stats: &GaussianStats, fake: &Tensor) -> Result<f64> {
    let features = extract_features(net, fake, FEATURE_BATCH);
    let mut acc = StatsAccumulator::new(net.dim());
    acc.add(&features)?;
    Ok(frechet_distance(stats, &acc.finish()?)?)
}

/// Computes and prints the metrics.
pub fn eval(args: EvalArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let (fake, source) = match (&args.run, &args.fake) {
        (Some(run_path), _) => {
            let run = args.pretrained.open(run_path, device)?;
            let sample = sample_config(&run, &args.sampling, args.count)?;
            let request = lpl_trainer::sampling::SampleRequest {
                batch: args.sampling.batch,
                ..run.request(&sample, device)
            };
            // several processes (torchrun, Slurm): each samples and decodes its share of the
            // batches, rank 0 gathers them (through files beside the run) and evaluates
            let world = World::from_env(&DistributedConfig::default(), device)?;
            let dir = if run_path.is_dir() {
                run_path.clone()
            } else {
                run_path.parent().map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
            };
            let Some(images) =
                request.images_across(&world, run.ae.as_ref(), &run.codec, &dir, "eval")?
            else {
                return Ok(());
            };
            (images, format!("{} (step {})", run_path.display(), run.step))
        }
        (None, Some(file)) if file.extension().is_some_and(|e| e == "npz") => {
            (npz_images(file, args.count)?, file.display().to_string())
        }
        (None, Some(dir)) => {
            let read = read_folder(dir, &ReadOptions::new(3))?;
            let k = (args.count as i64).min(read.images.size()[0]);
            (preprocess::to_unit_range(&read.images.narrow(0, 0, k))?, dir.display().to_string())
        }
        (None, None) => bail!("give --run or --fake"),
    };
    let fake = fake.to_device(Device::Cpu);
    let net = feature_network(&args, device)?;
    let real_path = PathBuf::from(&args.real);
    // an .npz is read once (ADM's reference batches are large): images and/or statistics
    let npz = real_path
        .extension()
        .is_some_and(|e| e == "npz")
        .then(|| lpl_tensor_io::npz::read_npz(&real_path))
        .transpose()?;
    // stored reference statistics (ADM's reference batches): the FD against them
    let stored = if let Some(arrays) = npz.as_ref().filter(|a| a.contains_key("mu")) {
        let stats = GaussianStats::from_tensors(arrays, &real_path)?;
        let d = stats.mu.size()[0];
        if d != net.dim() {
            bail!(
                "{}: its `mu`/`sigma` are {d}-dimensional, --features {} gives {}: reference \
                 statistics must come from the same network (ADM's: Inception pool3, 2048; use \
                 --features inception)",
                real_path.display(),
                args.features,
                net.dim()
            );
        }
        Some(stats)
    } else {
        None
    };
    let with_images = npz.as_ref().is_none_or(|a| a.contains_key("arr_0"));
    let (m, spectrum) = if with_images {
        let real = match &npz {
            Some(arrays) => npz_images_of(arrays, &real_path, args.count)?,
            None => real_images(&args, fake.size()[1] as u32, device)?,
        };
        let (real, fake) = same_layout(real, fake)?;
        let reference = RealReference::new(net.as_ref(), &real)?;
        if let Some(path) = &args.save_real_stats {
            reference.stats.save(path)?;
        }
        let (mut m, spectrum) = reference.compare(net.as_ref(), &fake)?;
        if let Some(stats) = &stored {
            m.fd = frechet_to(net.as_ref(), stats, &fake)?;
        }
        (m, Some(spectrum))
    } else {
        let stats = stored.context("no statistics")?;
        if let Some(path) = &args.save_real_stats {
            stats.save(path)?;
        }
        let fake = if fake.size()[1] == 1 { fake.repeat([1, 3, 1, 1]) } else { fake };
        let m = ImageMetrics {
            metric: net.metric_name().to_string(),
            fd: frechet_to(net.as_ref(), &stats, &fake)?,
            precision: f64::NAN,
            recall: f64::NAN,
            density: f64::NAN,
            coverage: f64::NAN,
            spectrum_low: f64::NAN,
            spectrum_high: f64::NAN,
            count: (stats.count, fake.size()[0]),
        };
        (m, None)
    };
    if let Some(path) = &args.save_real_stats {
        println!("real statistics: {}", path.display());
    }
    let show = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{x:.3}") };
    println!(
        "| generated | real | n real / fake | {} | precision | recall | density | coverage | spectrum err low / high |",
        m.metric
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| {source} | {} | {} / {} | {:.3} | {} | {} | {} | {} | {} / {} |",
        args.real,
        m.count.0,
        m.count.1,
        m.fd,
        show(m.precision),
        show(m.recall),
        show(m.density),
        show(m.coverage),
        show(m.spectrum_low),
        show(m.spectrum_high)
    );
    match (&args.plot, spectrum) {
        (Some(plot), Some(spectrum)) => {
            spectrum.plot(&format!("power spectra: {}", args.real), "generated").save_png(plot)?;
            println!("spectrum plot: {}", plot.display());
        }
        (Some(_), None) => bail!("--plot needs real images (statistics alone have no spectrum)"),
        _ => {}
    }
    println!(
        "{}",
        serde_json::json!({"generated": source, "real": args.real, "sampling": args.run.as_ref().map(|_| serde_json::json!({"steps": args.sampling.steps, "guidance": args.sampling.guidance, "seed": args.sampling.seed})), "metrics": m})
    );
    Ok(())
}
