//! `dit-tiny` and `unet-tiny` learn a toy latent dataset: eps-prediction MSE on the SD
//! schedule falls by at least 3x between the first and last 25 of 300 AdamW steps (batch
//! 32; the UNet at reduced width to keep the test short). Also: both run in bf16.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig, UNet, UNetConfig};
use lpl_schedulers::{NoiseSchedule, Parameterization, TimeSampler, TimeSampling};
use lpl_torch_ext::GlobalRng;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor, nn};

/// Two classes of 4x8x8 latents: a +/- checkerboard per class, with a little noise.
fn toy_batch(b: i64) -> (Tensor, Tensor) {
    let labels = Tensor::randint(2, [b], (Kind::Int64, Device::Cpu));
    let checker = (Tensor::arange(8, (Kind::Float, Device::Cpu)).view([8, 1])
        + Tensor::arange(8, (Kind::Float, Device::Cpu)).view([1, 8]))
    .remainder(2.0)
        * 2.0
        - 1.0;
    let sign = labels.to_kind(Kind::Float) * 2.0 - 1.0;
    let z0 = checker.view([1, 1, 8, 8]).repeat([b, 4, 1, 1]) * sign.view([b, 1, 1, 1])
        + Tensor::randn([b, 4, 8, 8], (Kind::Float, Device::Cpu)) * 0.05;
    (z0, labels)
}

fn train(model: &dyn Denoiser, steps: usize) -> (f64, f64) {
    tch::manual_seed(0);
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    let mut sampler = TimeSampler::new(TimeSampling::UniformDiscrete, 0).unwrap();
    let mut opt = nn::AdamW::default().build(model.var_store(), 1e-3).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let (z0, labels) = toy_batch(32);
        let eps = z0.randn_like();
        let t = sampler.sample(&schedule, 32, Device::Cpu).unwrap();
        let z_t = schedule.add_noise(&z0, &eps, &t).unwrap();
        let pred = model
            .forward_t(&z_t, &schedule.model_time(&t).unwrap(), &Conditioning::labels(labels), true)
            .unwrap();
        let target = Parameterization::Eps.target(&schedule, &z0, &eps, &t).unwrap();
        let loss = pred.mse_loss(&target, tch::Reduction::Mean);
        opt.backward_step(&loss);
        losses.push(f64::try_from(&loss).unwrap());
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&losses[..25]), mean(&losses[losses.len() - 25..]))
}

#[test]
fn tiny_dit_learns() {
    let _rng = GlobalRng::lock();
    let dit = Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::Float).unwrap();
    let (first, last) = train(&dit, 300);
    println!("dit-tiny: loss {first:.3} -> {last:.3}");
    assert!(last * 3.0 < first, "{first} -> {last}");
}

#[test]
fn tiny_unet_learns() {
    let _rng = GlobalRng::lock();
    let mut config = UNetConfig::preset("unet-tiny").unwrap();
    config.block_out_channels = vec![8, 16];
    config.norm_num_groups = 4;
    config.attention_head_dim = Some(8);
    let unet = UNet::new(&config, Device::Cpu, Kind::Float).unwrap();
    let (first, last) = train(&unet, 300);
    println!("unet-tiny: loss {first:.3} -> {last:.3}");
    assert!(last * 3.0 < first, "{first} -> {last}");
}

#[test]
fn bf16_forward() {
    let _rng = GlobalRng::lock();
    let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[1.0f32, 500.0]);
    let dit =
        Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(dit.forward(&x, &t, &Conditioning::none()).unwrap().kind(), Kind::BFloat16);
    let unet =
        UNet::new(&UNetConfig::preset("unet-tiny").unwrap(), Device::Cpu, Kind::BFloat16).unwrap();
    let out = unet.forward(&x, &t, &Conditioning::none()).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
}
