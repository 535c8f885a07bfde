//! Sampling throughput (`cargo xtask bench` runs it): images per second of whole sampling
//! loops from a class-conditional DiT with classifier-free guidance 2 (one denoiser call of
//! 2B rows per step, conditional and unconditional batched: the "evaluations" column counts
//! calls),
//! per sampler, and of decoding the latents to pixels; random weights (speed does not depend
//! on them).
//!
//! `cargo bench -p lpl-trainer --bench sampling [-- --device cpu|cuda --steps N
//! --batch-small B --batch-large B]`. Defaults: CPU 10 steps, batch 256 (DiT-mini) / 4
//! (DiT-S/2); CUDA 50 steps, batch 256 / 64 and DiT-B/2 too. Median of 3 after a warm-up.
//! Writes `target/bench/sampling.json` (or `$LPL_BENCH_OUT`) and prints a table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

mod support;

use std::time::Instant;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
use lpl_denoiser::{Denoiser, Dit, DitConfig};
use lpl_schedulers::{Guidance, NoiseSchedule, Parameterization, SamplerConfig, SamplerKind};
use lpl_trainer::run_config::SampleConfig;
use lpl_trainer::sampling::{SampleLabels, SampleRequest, decode};
use support::{arg, out_dir, peak_mb, sync};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `f` over 3 runs after one warm-up.
fn time(device: Device, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    let runs = (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(runs)
}

fn main() {
    let device = support::device(&arg("--device", "cpu"));
    let cuda = device.is_cuda();
    let steps: usize = arg("--steps", if cuda { "50" } else { "10" }).parse().unwrap();
    let small: i64 = arg("--batch-small", "256").parse().unwrap();
    let large: i64 = arg("--batch-large", if cuda { "64" } else { "4" }).parse().unwrap();
    let presets: &[&str] =
        if cuda { &["dit-mini", "dit-s-2", "dit-b-2"] } else { &["dit-mini", "dit-s-2"] };
    let samplers = [
        (SamplerKind::Ddim, steps),
        (SamplerKind::DpmSolverPp2m, steps),
        (SamplerKind::Heun, steps.div_ceil(2)),
    ];
    let schedule = NoiseSchedule::preset("dit").unwrap().to_device(device);
    println!(
        "\nsampling, {device:?}, classifier-free guidance 2 (one call of 2B rows per step), median of 3\n"
    );
    println!(
        "| model | latent | batch | sampler | steps | evaluations | images/s | ms / evaluation | decode images/s | peak MB |"
    );
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &preset in presets {
        tch::manual_seed(0);
        let config = DitConfig::preset(preset).unwrap();
        let dit = Dit::new(&config, device, Kind::Float).unwrap();
        let batch = if preset == "dit-mini" { small } else { large };
        let shape = [config.in_channels, config.sample_size, config.sample_size];
        let classes = config.num_embeds_ada_norm.unwrap_or(1000);
        let labels = Tensor::arange(batch, (Kind::Int64, Device::Cpu)).remainder(classes);
        let ae_preset = if preset == "dit-mini" { "fmnist" } else { "sd" };
        let mut ae = AutoencoderKl::new(
            &AutoencoderKlConfig::preset(ae_preset).unwrap(),
            device,
            Kind::Float,
        )
        .unwrap();
        ae.set_requires_grad(false);
        let codec = ae.codec().clone();
        let latents = Tensor::randn([batch, shape[0], shape[1], shape[2]], (Kind::Float, device));
        let decode_s = time(device, || {
            let _ = decode(&ae, &codec, &latents).unwrap();
        });
        for (kind, n) in samplers {
            let sample = SampleConfig {
                sampler: SamplerConfig::new(kind, n),
                guidance: Guidance::new(2.0),
                count: batch as usize,
                seed: 0,
                every: 0,
            };
            let mut evaluations = 0usize;
            let counting = CountingDenoiser { inner: &dit, calls: std::cell::Cell::new(0) };
            let s = time(device, || {
                counting.calls.set(0);
                let mut request = SampleRequest::new(
                    &counting,
                    &schedule,
                    Parameterization::Eps,
                    shape,
                    &sample,
                    device,
                );
                request.labels = SampleLabels::Given(labels.shallow_clone());
                let _ = request.latents().unwrap();
                evaluations = counting.calls.get();
            });
            let ips = batch as f64 / s;
            let latent = format!("{0}x{0}x{1}", shape[1], shape[0]);
            println!(
                "| {preset} | {latent} | {batch} | {kind:?} | {n} | {evaluations} | {ips:.1} | {:.2} | {:.1} | {:.0} |",
                s * 1000.0 / evaluations as f64,
                batch as f64 / decode_s,
                peak_mb(device),
            );
            rows.push(serde_json::json!({
                "model": preset, "latent": latent, "batch": batch, "sampler": format!("{kind:?}"),
                "steps": n, "evaluations": evaluations, "images_per_s": ips,
                "ms_per_evaluation": s * 1000.0 / evaluations as f64,
                "decode_images_per_s": batch as f64 / decode_s, "peak_mb": peak_mb(device),
            }));
        }
    }
    let json = serde_json::json!({"bench": "sampling", "device": format!("{device:?}"), "guidance": 2.0, "threads": tch::get_num_threads(), "rows": rows});
    std::fs::write(out_dir().join("sampling.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}

/// The DiT, counting its forward calls (one per guided evaluation of 2B samples).
struct CountingDenoiser<'a> {
    inner: &'a Dit,
    calls: std::cell::Cell<usize>,
}

impl Denoiser for CountingDenoiser<'_> {
    fn forward_t(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &lpl_denoiser::Conditioning,
        train: bool,
    ) -> lpl_denoiser::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        self.inner.forward_t(x, t, cond, train)
    }

    fn var_store(&self) -> &tch::nn::VarStore {
        self.inner.var_store()
    }

    fn in_channels(&self) -> i64 {
        self.inner.in_channels()
    }

    fn out_channels(&self) -> i64 {
        self.inner.out_channels()
    }

    fn num_classes(&self) -> Option<i64> {
        self.inner.num_classes()
    }
}
