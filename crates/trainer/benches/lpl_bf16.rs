//! The LPL decoder branch under bf16 autocast (`[precision] lpl_decoder_autocast = true`)
//! against f32: the LPL value's relative error, the relative L2 error and cosine of its
//! gradient with respect to the predicted clean latents, and the time of one value+gradient
//! call, for both shipped presets (`paper`, `diffusers`), on the SD-like decoder (random
//! weights, 32x32x4 latents) and TAEF2 (real weights when present, 32x32x32 latents).
//! Predictions are the clean latents plus noise at three levels (a denoiser's errors early,
//! midway and late in training), 8 samples, every sample kept.
//!
//! `cargo bench -p lpl-trainer --bench lpl_bf16 [-- --batch B --device cpu|cuda --repeats N]`.
//! Writes `target/bench/lpl_bf16.json` and prints a table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

use std::path::Path;
use std::time::Instant;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig, Taesd};
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplGate};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use lpl_torch_ext::{Autocast, AutocastDtype};
use tch::{Device, Kind, Tensor};

mod support;

use support::{arg, device, out_dir, peak_mb};

/// The value and the gradient with respect to `x0_hat`, and the seconds of the call.
fn value_and_grad(
    lpl: &LatentPerceptualLoss<'_>,
    x0_hat: &Tensor,
    z0: &Tensor,
    t: &Tensor,
    schedule: &NoiseSchedule,
    bf16: bool,
) -> (f64, Tensor, f64) {
    let device = x0_hat.device();
    let start = Instant::now();
    let x = x0_hat.detach().set_requires_grad(true);
    let region = bf16.then(|| Autocast::enter(device, AutocastDtype::BFloat16).unwrap());
    let out = lpl.loss(&x, z0, t, schedule, Parameterization::Eps).unwrap();
    drop(region);
    out.total.backward();
    let g = x.grad().detach().to_kind(Kind::Double);
    let value = f64::try_from(&out.total).unwrap();
    (value, g, start.elapsed().as_secs_f64())
}

fn main() {
    let device = device(&arg("--device", "cpu"));
    let batch: i64 = arg("--batch", "8").parse().unwrap();
    let repeats: usize = arg("--repeats", "2").parse().unwrap();
    tch::manual_seed(0);
    let mut decoders: Vec<(&str, Box<dyn Autoencoder>, [i64; 3])> = Vec::new();
    let sd = AutoencoderKlConfig::preset("sd").unwrap();
    let mut kl = AutoencoderKl::new(&sd, device, Kind::Float).unwrap();
    kl.set_requires_grad(false);
    decoders.push(("SD-like (random)", Box::new(kl), [4, 32, 32]));
    let taef2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets/taef2");
    match Taesd::from_dir(&taef2, device, Kind::Float) {
        Ok(mut t) => {
            t.set_requires_grad(false);
            decoders.push(("TAEF2", Box::new(t), [32, 32, 32]));
        }
        Err(_) => println!("TAEF2 weights not found at {}: its rows are skipped", taef2.display()),
    }
    let schedule = NoiseSchedule::preset("dit").unwrap();
    let t = Tensor::zeros([batch], (Kind::Int64, Device::Cpu));
    let mut rows = Vec::new();
    println!(
        "| decoder | preset | prediction error | value rel. err | grad rel. L2 err | grad cosine | f32 s | bf16 s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (name, ae, [c, h, w]) in &decoders {
        let codec = ae.codec().clone();
        let z0 = Tensor::randn([batch, *c, *h, *w], (Kind::Float, device));
        for preset in ["paper", "diffusers"] {
            // every sample kept, whatever t: the gate's worst case and the same set each time
            let config = LplConfig { gate: LplGate::All, ..LplConfig::preset(preset).unwrap() };
            let lpl = LatentPerceptualLoss::new(ae.as_ref(), codec.clone(), config).unwrap();
            for sigma in [0.5, 0.1, 0.02] {
                let x0_hat = &z0 + Tensor::randn_like(&z0) * sigma;
                let mut f32_s = f64::INFINITY;
                let mut bf16_s = f64::INFINITY;
                let mut reference = None;
                let mut reduced = None;
                for _ in 0..repeats {
                    let r = value_and_grad(&lpl, &x0_hat, &z0, &t, &schedule, false);
                    f32_s = f32_s.min(r.2);
                    reference = Some(r);
                    let b = value_and_grad(&lpl, &x0_hat, &z0, &t, &schedule, true);
                    bf16_s = bf16_s.min(b.2);
                    reduced = Some(b);
                }
                let ((v, g, _), (vb, gb, _)) = (reference.unwrap(), reduced.unwrap());
                let value_err = (vb - v).abs() / v.abs();
                let grad_err = f64::try_from((&gb - &g).norm() / g.norm()).unwrap();
                let cosine =
                    f64::try_from((&gb * &g).sum(Kind::Double) / (gb.norm() * g.norm())).unwrap();
                println!(
                    "| {name} | {preset} | {sigma} | {value_err:.2e} | {grad_err:.2e} | {cosine:.5} | {f32_s:.2} | {bf16_s:.2} |"
                );
                rows.push(serde_json::json!({
                    "decoder": name, "preset": preset, "sigma": sigma, "value": v,
                    "value_rel_err": value_err, "grad_rel_l2_err": grad_err, "grad_cosine": cosine,
                    "f32_s": f32_s, "bf16_s": bf16_s,
                }));
            }
        }
    }
    let out = out_dir();
    let report = serde_json::json!({
        "device": format!("{device:?}"), "batch": batch, "rows": rows,
        "peak_mb_both_modes": peak_mb(device),
    });
    std::fs::write(out.join("lpl_bf16.json"), serde_json::to_string_pretty(&report).unwrap())
        .unwrap();
}
