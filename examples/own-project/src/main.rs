//! One step of a model of your own trained with the latent perceptual loss of `lpl-loss`,
//! through the decoder of a small AutoencoderKL from `lpl-autoencoder`.
//!
//! The model maps noisy latents to clean-latent predictions; the loss is MSE + LPL
//! (`paper` preset, every sample kept); one AdamW step is taken, then the loss of the same
//! batch is computed again. Prints `loss before <x> after <y>` and exits with an error if
//! either is not finite and positive or the step did not lower it.

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplGate};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Your model: two convolutions from noisy latents to a clean-latent prediction.
#[derive(Debug)]
struct Denoise {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl Denoise {
    fn new(p: nn::Path, channels: i64) -> Self {
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        Self {
            conv1: nn::conv2d(&p / "conv1", channels, 32, 3, cfg),
            conv2: nn::conv2d(&p / "conv2", 32, channels, 3, cfg),
        }
    }
}

impl Module for Denoise {
    fn forward(&self, x: &Tensor) -> Tensor {
        x + self.conv2.forward(&self.conv1.forward(x).silu())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tch::manual_seed(0);
    let device = Device::Cpu;
    // a small AutoencoderKL (random weights here; load yours with lpl_autoencoder::open)
    let config = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 8],
        norm_num_groups: 4,
        ..AutoencoderKlConfig::default()
    };
    let mut ae = AutoencoderKl::new(&config, device, Kind::Float)?;
    ae.set_requires_grad(false);
    let mut lpl_config = LplConfig::preset("paper")?;
    lpl_config.gate = LplGate::All;
    let lpl = LatentPerceptualLoss::new(&ae, ae.codec().clone(), lpl_config)?;
    let schedule = NoiseSchedule::preset("dit")?;

    // a batch: clean latents, their noisy versions, noise levels
    let z0 = Tensor::randn([4, 4, 8, 8], (Kind::Float, device));
    let t = Tensor::from_slice(&[50.0f32, 100.0, 150.0, 200.0]);
    let eps = Tensor::randn_like(&z0);
    let z_t = schedule.add_noise(&z0, &eps, &t)?;

    let vs = nn::VarStore::new(device);
    let model = Denoise::new(vs.root(), 4);
    let mut opt = nn::AdamW::default().build(&vs, 1e-3)?;
    let loss_of = |model: &Denoise| -> Result<Tensor, Box<dyn std::error::Error>> {
        let x0_hat = model.forward(&z_t);
        let mse = (&x0_hat - &z0).square().mean(Kind::Float);
        let out = lpl.loss(&x0_hat, &z0, &t, &schedule, Parameterization::X0)?;
        Ok(mse + out.total)
    };
    let before = loss_of(&model)?;
    opt.backward_step(&before);
    let after = tch::no_grad(|| loss_of(&model))?;
    let (before, after) = (before.double_value(&[]), after.double_value(&[]));
    println!("loss before {before:.6} after {after:.6}");
    if !(before.is_finite() && after.is_finite() && before > 0.0 && after > 0.0) {
        return Err(format!("the loss must be finite and positive: {before} -> {after}").into());
    }
    if after >= before {
        return Err(format!("one AdamW step did not lower the loss: {before} -> {after}").into());
    }
    Ok(())
}
