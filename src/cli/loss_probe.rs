//! `lpl loss-probe`: the latent perceptual loss of two latent files, as JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplGate};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::{Kind, Tensor};

/// Arguments of `lpl loss-probe`.
#[derive(Args)]
pub struct LossProbeArgs {
    /// A diffusers VAE folder, a folder with a TAESD pair, or an lpl checkpoint.
    #[arg(long)]
    ae: PathBuf,
    /// Predicted latents (model space), key `latents`, (B, C, h, w).
    #[arg(long)]
    pred: PathBuf,
    /// Target latents (model space), key `latents`, same shape.
    #[arg(long)]
    target: PathBuf,
    /// `paper` or `diffusers`.
    #[arg(long, default_value = "paper")]
    preset: String,
    /// Timesteps, one per sample (comma-separated); without them every sample is kept.
    #[arg(long, value_delimiter = ',')]
    t: Option<Vec<i64>>,
    /// Noise schedule preset the timesteps refer to.
    #[arg(long, default_value = "sd15")]
    schedule: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn read_latents(path: &Path) -> Result<Tensor> {
    let tensors = lpl_tensor_io::read_tensors(path)?;
    match tensors.get("latents") {
        Some(t) if t.dim() == 4 => Ok(t.to_kind(Kind::Float)),
        Some(t) => {
            bail!("{}: `latents` has shape {:?}, expected (B, C, h, w)", path.display(), t.size())
        }
        None => bail!(
            "{}: no tensor named `latents` (found: {:?})",
            path.display(),
            tensors.keys().collect::<Vec<_>>()
        ),
    }
}

/// Runs the probe and prints one JSON object.
pub fn run(args: LossProbeArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let mut ae = lpl_autoencoder::open(&args.ae, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let pred = read_latents(&args.pred)?.to_device(device);
    let target = read_latents(&args.target)?.to_device(device);
    if pred.size() != target.size() {
        bail!("pred {:?} and target {:?} differ in shape", pred.size(), target.size());
    }
    let b = pred.size()[0];
    let mut config = LplConfig::preset(&args.preset)?;
    let t = match &args.t {
        Some(t) => {
            if t.len() as i64 != b {
                bail!("--t has {} values for {b} samples", t.len());
            }
            Tensor::from_slice(t)
        }
        None => {
            config.gate = LplGate::All;
            Tensor::zeros([b], (Kind::Int64, tch::Device::Cpu))
        }
    };
    let schedule = NoiseSchedule::preset(&args.schedule)?;
    let lpl = LatentPerceptualLoss::new(ae.as_ref(), ae.codec().clone(), config)?;
    let out = tch::no_grad(|| lpl.loss(&pred, &target, &t, &schedule, Parameterization::Eps))
        .context("computing the loss")?;
    let list = |x: &Tensor| -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(tch::Device::Cpu))?)
    };
    let layers: Vec<String> = lpl.plan().iter().map(|p| p.layer.name.clone()).collect();
    let json = serde_json::json!({
        "preset": args.preset,
        "total": f64::try_from(&out.total)?,
        "per_layer": list(&out.per_layer)?,
        "layers": layers,
        "masked_fraction": list(&out.masked_fraction)?,
        "kept_fraction": f64::try_from(&out.kept_fraction)?,
        "per_sample": list(&out.per_sample)?,
    });
    println!("{json}");
    Ok(())
}
