//! LPL overhead: time and peak memory of one training step of a DiT-S/2 with MSE + LPL
//! relative to MSE alone, per decoder depth, for an SD-like decoder (random weights, latent
//! 32x32x4) and for TAEF2 (real weights when ../shared/assets/taef2 exists, latent 32x32x32).
//! All samples are kept (the gate's worst case: cost scales with the kept fraction).
//!
//! `cargo bench -p lpl-loss --bench overhead [-- --batch B --steps N --device cpu|cuda
//! --chunk C --depths D1,D2]`. With `--chunk C` every depth is measured twice more with the
//! LPL's gradient computed C kept samples at a time (`value_and_grad`, the trainer's
//! `[loss.lpl] chunk`): keeping each chunk's decoder graph, and recomputing it stage by stage
//! (`[loss.lpl] recompute = true`).
//! Each case runs in a child process so that its peak resident memory (VmHWM; on CUDA the
//! allocator's peak is not exposed by tch, so RSS is what is reported) is its own. Writes
//! `target/bench/lpl_overhead.json` and prints a table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig, Taesd};
use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig};
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplGate, x0_from_prediction};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor, nn};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn taef2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets/taef2")
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One case in this process: prints `{"ms": median step ms, "peak_mb": ...}`.
fn child(
    decoder: &str,
    depth: Option<usize>,
    chunk: Option<usize>,
    recompute: bool,
    batch: i64,
    steps: usize,
    device: Device,
) {
    tch::manual_seed(0);
    let mut ae: Box<dyn Autoencoder> = match decoder {
        "sd" => Box::new(
            AutoencoderKl::new(&AutoencoderKlConfig::preset("sd").unwrap(), device, Kind::Float)
                .unwrap(),
        ),
        _ => Box::new(Taesd::from_dir(&taef2_dir(), device, Kind::Float).unwrap()),
    };
    ae.set_requires_grad(false);
    let c = ae.latent_channels();
    let dit_config = DitConfig { in_channels: c, ..DitConfig::preset("dit-s-2").unwrap() };
    let dit = Dit::new(&dit_config, device, Kind::Float).unwrap();
    let mut opt = nn::AdamW::default().build(dit.var_store(), 1e-4).unwrap();
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    let lpl = depth.map(|d| {
        let mut config = LplConfig::preset("paper").unwrap();
        config.depth = Some(d);
        config.gate = LplGate::All;
        config.chunk = chunk;
        config.recompute = recompute;
        LatentPerceptualLoss::new(ae.as_ref(), ae.codec().clone(), config).unwrap()
    });
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let z0 = Tensor::randn([batch, c, 32, 32], (Kind::Float, device));
        let eps = z0.randn_like();
        let t = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
        let start = Instant::now();
        let z_t = schedule.add_noise(&z0, &eps, &t.to_device(device)).unwrap();
        let pred = dit
            .forward_t(
                &z_t,
                &schedule.model_time(&t).unwrap().to_device(device),
                &Conditioning::none(),
                true,
            )
            .unwrap();
        let mut loss = pred.mse_loss(&eps, tch::Reduction::Mean);
        if let Some(lpl) = &lpl {
            let x0 = x0_from_prediction(
                &pred,
                &z_t,
                &t.to_device(device),
                Parameterization::Eps,
                &schedule,
            )
            .unwrap();
            loss += match chunk {
                Some(c) => {
                    let (_, grad) = lpl
                        .value_and_grad(&x0, &z0, &t, &schedule, Parameterization::Eps, c)
                        .unwrap();
                    (&x0 * grad).sum(Kind::Float)
                }
                None => lpl.loss(&x0, &z0, &t, &schedule, Parameterization::Eps).unwrap().total,
            };
        }
        opt.backward_step(&loss);
        let _ = f64::try_from(&loss).unwrap(); // synchronise
        if step > 0 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("{{\"ms\": {}, \"peak_mb\": {}}}", times[times.len() / 2], peak_rss_mb());
}

fn main() {
    let batch: i64 = arg("--batch", "1").parse().unwrap();
    let steps: usize = arg("--steps", "2").parse().unwrap();
    let device_name = arg("--device", "cpu");
    let device = if device_name == "cuda" { Device::Cuda(0) } else { Device::Cpu };
    if let Some(case) =
        std::env::args().position(|a| a == "--case").and_then(|i| std::env::args().nth(i + 1))
    {
        let mut parts = case.split(':');
        let decoder = parts.next().unwrap();
        let depth = parts.next().and_then(|d| d.parse().ok());
        let chunk = parts.next().and_then(|c| c.parse().ok());
        let recompute = parts.next() == Some("recompute");
        child(decoder, depth, chunk, recompute, batch, steps, device);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let chunk: Option<usize> = arg("--chunk", "").parse().ok();
    let depths: Option<Vec<usize>> = (!arg("--depths", "").is_empty())
        .then(|| arg("--depths", "").split(',').map(|d| d.parse().unwrap()).collect());
    let mut decoders = vec![("sd", 4usize)];
    if taef2_dir().join("taef2_decoder.safetensors").exists() {
        decoders.push(("taef2", 3));
    } else {
        println!("TAEF2 weights not found: its rows are skipped");
    }
    let run = |case: String| -> (f64, f64) {
        let out = Command::new(&exe)
            .args([
                "--case",
                &case,
                "--batch",
                &batch.to_string(),
                "--steps",
                &steps.to_string(),
                "--device",
                &device_name,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line =
            text.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{case}: {text}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        (v["ms"].as_f64().unwrap_or(f64::NAN), v["peak_mb"].as_f64().unwrap_or(f64::NAN))
    };
    let mut rows = Vec::new();
    println!("| decoder | depth | chunk | step ms | x MSE step | peak RSS MB | x MSE peak |");
    println!("|---|---|---|---|---|---|---|");
    for (decoder, max_depth) in decoders {
        let (base_ms, base_mb) = run(format!("{decoder}:mse"));
        println!("| {decoder} | MSE only | - | {base_ms:.0} | 1.00 | {base_mb:.0} | 1.00 |");
        let chosen = depths.clone().unwrap_or_else(|| (0..=max_depth).collect());
        for depth in chosen.into_iter().filter(|d| *d <= max_depth) {
            let chunks = std::iter::once((None, false))
                .chain(chunk.map(|c| (Some(c), false)))
                .chain(chunk.map(|c| (Some(c), true)));
            for (c, recompute) in chunks {
                let case = match c {
                    Some(c) if recompute => format!("{decoder}:{depth}:{c}:recompute"),
                    Some(c) => format!("{decoder}:{depth}:{c}"),
                    None => format!("{decoder}:{depth}"),
                };
                let (ms, mb) = run(case);
                let shown = match c {
                    Some(c) if recompute => format!("{c}, recompute"),
                    Some(c) => c.to_string(),
                    None => "-".to_string(),
                };
                println!(
                    "| {decoder} | {depth} | {shown} | {ms:.0} | {:.2} | {mb:.0} | {:.2} |",
                    ms / base_ms,
                    mb / base_mb
                );
                rows.push(format!(
                    "{{\"decoder\": \"{decoder}\", \"depth\": {depth}, \"chunk\": {}, \"recompute\": {recompute}, \"step_ms\": {ms:.1}, \"mse_step_ms\": {base_ms:.1}, \"time_ratio\": {:.3}, \"peak_mb\": {mb:.0}, \"mse_peak_mb\": {base_mb:.0}, \"memory_ratio\": {:.3}}}",
                    c.map_or("null".to_string(), |c| c.to_string()),
                    ms / base_ms,
                    mb / base_mb
                ));
            }
        }
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = format!(
        "{{\"bench\": \"lpl_overhead\", \"device\": \"{device_name}\", \"batch\": {batch}, \"denoiser\": \"dit-s-2\", \"latent\": 32, \"rows\": [{}]}}\n",
        rows.join(", ")
    );
    std::fs::write(out.join("lpl_overhead.json"), json).unwrap();
}
