//! `lpl ae encode | decode | train`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use lpl_data::{Split, folder};
use lpl_trainer::ae_training::{self, AeTrainConfig};
use tch::{Device, Kind, Tensor};

/// Autoencoder commands.
#[derive(Subcommand)]
pub enum AeCommand {
    /// Encode a folder of images into model-space latents (`latents`, (B, C, H, W) f32).
    Encode {
        /// A diffusers VAE folder, a folder with a TAESD pair, or an lpl checkpoint.
        #[arg(long)]
        ae: PathBuf,
        /// Folder of PNG / JPEG / WebP images, all the same size (sorted by name).
        #[arg(long)]
        images: PathBuf,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Sample the latent distribution instead of taking its mean.
        #[arg(long)]
        sample: bool,
        /// Images per batch.
        #[arg(long, default_value_t = 16)]
        batch: i64,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Decode model-space latents (`latents` key) into 8-bit PNGs 000000.png, ...
    Decode {
        /// A diffusers VAE folder, a folder with a TAESD pair, or an lpl checkpoint.
        #[arg(long)]
        ae: PathBuf,
        /// Input .safetensors with a `latents` tensor.
        #[arg(long)]
        latents: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Latents per batch.
        #[arg(long, default_value_t = 16)]
        batch: i64,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Train an AutoencoderKL from a TOML config (e.g. configs/ae-fmnist.toml).
    Train {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Override `train.steps`.
        #[arg(long)]
        steps: Option<usize>,
        /// Override `output_dir`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

/// Runs one autoencoder command.
pub fn run(command: AeCommand) -> Result<()> {
    match command {
        AeCommand::Encode { ae, images, out, sample, batch, device } => {
            encode(&ae, &images, &out, sample, batch, super::parse_device(&device)?)
        }
        AeCommand::Decode { ae, latents, out, batch, device } => {
            decode(&ae, &latents, &out, batch, super::parse_device(&device)?)
        }
        AeCommand::Train { config, steps, out, device } => {
            train(&config, steps, out, super::parse_device(&device)?)
        }
    }
}

fn encode(
    ae_path: &Path,
    images: &Path,
    out: &Path,
    sample: bool,
    batch: i64,
    device: Device,
) -> Result<()> {
    let ae = lpl_autoencoder::open(ae_path, device, Kind::Float)?;
    let read = folder::read_folder(images, &folder::ReadOptions::new(ae.image_channels() as u32))?;
    for (file, why) in &read.skipped {
        tracing::warn!("skipped {}: {why}", file.display());
    }
    let n = read.images.size()[0];
    let bar = lpl_trainer::progress::bar(n as u64, "encode");
    let codec = ae.codec().clone();
    let mut parts = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for s in (0..n).step_by(batch.max(1) as usize) {
            let len = batch.max(1).min(n - s);
            let x = codec
                .pixels_to_input(&(read.images.narrow(0, s, len).to_kind(Kind::Float) / 255.0));
            let dist = ae.encode(&x.to_device(device))?;
            let z = if sample { dist.sample() } else { dist.mode() };
            parts.push(codec.to_model(&z)?.to_kind(Kind::Float).to_device(Device::Cpu));
            bar.inc(len as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let latents = Tensor::cat(&parts, 0);
    let meta = BTreeMap::from([
        ("lpl.codec".to_string(), codec.to_json()),
        ("lpl.autoencoder".to_string(), ae_path.display().to_string()),
        ("lpl.space".to_string(), "model".to_string()),
    ]);
    lpl_tensor_io::save(&[("latents".to_string(), latents.shallow_clone())], &meta, out)?;
    println!(
        "encoded {} images ({} skipped) -> {} latents {:?}",
        read.files.len(),
        read.skipped.len(),
        out.display(),
        latents.size()
    );
    Ok(())
}

fn decode(
    ae_path: &Path,
    latents_path: &Path,
    out: &Path,
    batch: i64,
    device: Device,
) -> Result<()> {
    let ae = lpl_autoencoder::open(ae_path, device, Kind::Float)?;
    let tensors = lpl_tensor_io::read_tensors(latents_path)?;
    let Some(latents) = tensors.get("latents") else {
        bail!(
            "{}: no tensor named `latents` (found: {:?})",
            latents_path.display(),
            tensors.keys().collect::<Vec<_>>()
        );
    };
    let size = latents.size();
    if size.len() != 4 || size[1] != ae.latent_channels() {
        bail!(
            "{}: `latents` has shape {size:?}, the autoencoder needs (B, {}, h, w)",
            latents_path.display(),
            ae.latent_channels()
        );
    }
    let codec = ae.codec().clone();
    let n = size[0];
    let bar = lpl_trainer::progress::bar(n as u64, "decode");
    tch::no_grad(|| -> Result<()> {
        for s in (0..n).step_by(batch.max(1) as usize) {
            let len = batch.max(1).min(n - s);
            let z = codec
                .to_decoder(&latents.narrow(0, s, len).to_kind(Kind::Float).to_device(device))?;
            let images = codec.output_to_pixels(&ae.decode(&z)?);
            folder::write_pngs(&images, out, s as usize)?;
            bar.inc(len as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    println!("decoded {n} latents -> {}", out.display());
    Ok(())
}

fn train(
    config_path: &Path,
    steps: Option<usize>,
    out: Option<PathBuf>,
    device: Device,
) -> Result<()> {
    let mut config = AeTrainConfig::from_file(config_path)?;
    if let Some(steps) = steps {
        config.train.steps = steps;
    }
    if let Some(out) = out {
        config.output_dir = out;
    }
    let train = ae_training::load_split(&config.data, Split::Train)
        .context("loading the training split")?;
    let test =
        ae_training::load_split(&config.data, Split::Test).context("loading the test split")?;
    println!(
        "training AutoencoderKL on {} images ({} steps of {}) on {device:?}",
        train.images.size()[0],
        config.train.steps,
        config.train.batch_size
    );
    let report = ae_training::train_autoencoder(&config, &train.images, &test.images, device)?;
    println!("| steps | train time | images/s | test PSNR (dB) | checkpoint |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.0} s | {:.0} | {:.2} | {} |",
        report.steps,
        report.train_seconds,
        report.images_per_sec,
        report.test_psnr,
        report.checkpoint.display()
    );
    Ok(())
}
