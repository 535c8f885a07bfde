//! Training-step throughput (`cargo xtask bench` runs it): one full step (noising, DiT
//! forward, MSE on eps, backward, our AdamW) in images/s and peak memory, with and without
//! the paper's LPL, for the tiny default (DiT-mini at 8x8x4, the Fashion-MNIST AE's decoder)
//! and DiT-S/2 and DiT-B/2 at 32x32x4 (an SD-architecture decoder, random weights); and the
//! same MSE step in PyTorch eager (diffusers' DiTTransformer2DModel, torch.optim.AdamW;
//! benches/pytorch_step.py) with the torch install that provides our libtorch, in the same
//! invocation: the ratio ours / PyTorch.
//!
//! `cargo bench -p lpl-trainer --bench train_step [-- --steps N --device cpu|cuda
//! --batch-small B --batch-large B --precision f32|bf16|all]`. Precision: `f32` (on CUDA
//! with TF32 matmuls on both sides) or `bf16` autocast (f32 master weights; the LPL decoder
//! branch in f32, as `lpl train` does); default `f32` on CPU and both on CUDA. Each case
//! runs in a child process: peak memory is the process's peak RSS on CPU and the CUDA
//! allocator's peak allocated bytes on CUDA (both sides). Writes
//! `target/bench/train_step.json` (or `$LPL_BENCH_OUT/train_step.json`) and prints a table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig};
use lpl_loss::{LatentPerceptualLoss, LplConfig, x0_from_prediction};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use lpl_torch_ext::{Autocast, AutocastDtype};
use lpl_trainer::adamw::{AdamW, AdamWConfig};
use support::{arg, peak_mb, sync};
use tch::{Device, Kind, Tensor};

/// The DiT of a case, in diffusers' layout (one conditioning embedder per block), so that the
/// PyTorch reference builds the identical model.
fn dit_config(preset: &str) -> DitConfig {
    DitConfig { shared_conditioning: Some(false), ..DitConfig::preset(preset).unwrap() }
}

fn ae_config(preset: &str) -> AutoencoderKlConfig {
    AutoencoderKlConfig::preset(if preset == "dit-mini" { "fmnist" } else { "sd" }).unwrap()
}

/// One case in this process: prints `{"ms": median step ms, "peak_mb": ...}`.
fn child(preset: &str, lpl: bool, batch: i64, steps: usize, device: Device, bf16: bool) {
    tch::manual_seed(0);
    if device.is_cuda() {
        lpl_torch_ext::tf32::set(true).unwrap();
    }
    let autocast = bf16.then_some(AutocastDtype::BFloat16);
    let config = dit_config(preset);
    let dit = Dit::new(&config, device, Kind::Float).unwrap();
    let mut opt = AdamW::new(dit.var_store(), AdamWConfig::default()).unwrap();
    let schedule = NoiseSchedule::preset("dit").unwrap().to_device(device);
    let mut ae = AutoencoderKl::new(&ae_config(preset), device, Kind::Float).unwrap();
    ae.set_requires_grad(false);
    let loss_fn = lpl.then(|| {
        LatentPerceptualLoss::new(&ae, ae.codec().clone(), LplConfig::preset("paper").unwrap())
            .unwrap()
    });
    let (c, s) = (config.in_channels, config.sample_size);
    let classes = config.num_embeds_ada_norm.unwrap_or(1000);
    let mut times = Vec::new();
    for step in 0..=steps {
        // the same t for both arms at a step (the LPL gate keeps a comparable fraction)
        tch::manual_seed(step as i64);
        let z0 = Tensor::randn([batch, c, s, s], (Kind::Float, device));
        let eps = z0.randn_like();
        let t = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
        let labels = Tensor::randint(classes, [batch], (Kind::Int64, device));
        sync(device);
        let start = Instant::now();
        let t_dev = t.to_device(device);
        let z_t = schedule.add_noise(&z0, &eps, &t_dev).unwrap();
        let region = autocast.map(|d| Autocast::enter(device, d).unwrap());
        let pred = dit
            .forward_t(
                &z_t,
                &schedule.model_time(&t_dev).unwrap(),
                &Conditioning::labels(labels),
                true,
            )
            .unwrap()
            .to_kind(Kind::Float);
        let mut loss = pred.mse_loss(&eps, tch::Reduction::Mean);
        if let Some(lpl) = &loss_fn {
            let x0 =
                x0_from_prediction(&pred, &z_t, &t_dev, Parameterization::Eps, &schedule).unwrap();
            let _f32 = region.as_ref().map(|_| Autocast::disable(device).unwrap());
            loss += lpl.loss(&x0, &z0, &t, &schedule, Parameterization::Eps).unwrap().total;
        }
        drop(region);
        opt.zero_grad();
        loss.backward();
        opt.step(1e-4).unwrap();
        sync(device);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        } else if device.is_cuda() {
            // the peak of a steady-state step (the warm-up step allocates AdamW's moments)
            lpl_torch_ext::memory::reset_peak(device).unwrap();
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("{{\"ms\": {}, \"peak_mb\": {}}}", times[times.len() / 2], peak_mb(device));
}

/// The python of the torch install our libtorch comes from (`<venv>/bin/python`), or
/// `$LPL_TORCH_PYTHON` (e.g. a system `python3` on a machine whose torch is not in a venv).
fn torch_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("LPL_TORCH_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let lib = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch")))?;
    let torch = std::fs::canonicalize(lib).ok()?; // <venv>/lib/python3.X/site-packages/torch
    let python = torch.parent()?.parent()?.parent()?.parent()?.join("bin/python");
    python.is_file().then_some(python)
}

/// `benches/pytorch_step.py` of this checkout; a binary carried to another machine looks in
/// the working directory's `crates/trainer/benches/`.
fn pytorch_script() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pytorch_step.py");
    if built.is_file() { built } else { PathBuf::from("crates/trainer/benches/pytorch_step.py") }
}

fn main() {
    let device_name = arg("--device", "cpu");
    let device = support::device(&device_name);
    let steps: usize = arg("--steps", if device.is_cuda() { "10" } else { "3" }).parse().unwrap();
    let small: i64 = arg("--batch-small", "128").parse().unwrap();
    let large: i64 =
        arg("--batch-large", if device.is_cuda() { "64" } else { "4" }).parse().unwrap();
    let precision = arg("--precision", if device.is_cuda() { "all" } else { "f32" });
    if let Some(case) =
        std::env::args().position(|a| a == "--case").and_then(|i| std::env::args().nth(i + 1))
    {
        let (preset, lpl) = case.split_once(':').unwrap();
        let batch = if preset == "dit-mini" { small } else { large };
        child(preset, lpl == "lpl", batch, steps, device, precision == "bf16");
        return;
    }
    let precisions: Vec<&str> = match precision.as_str() {
        "all" => vec!["f32", "bf16"],
        "f32" => vec!["f32"],
        "bf16" => vec!["bf16"],
        other => panic!("--precision {other}: expected f32, bf16 or all"),
    };
    let exe = std::env::current_exe().unwrap();
    let common = |precision: &str| {
        [
            "--steps".to_string(),
            steps.to_string(),
            "--device".into(),
            device_name.clone(),
            "--batch-small".into(),
            small.to_string(),
            "--batch-large".into(),
            large.to_string(),
            "--precision".into(),
            precision.to_string(),
        ]
    };
    let json_line = |out: std::process::Output, what: &str| -> serde_json::Value {
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{what}: {text}{}", String::from_utf8_lossy(&out.stderr)));
        serde_json::from_str(line).unwrap()
    };
    let python = torch_python();
    let script = pytorch_script();
    let mut rows = Vec::new();
    let memory = if device.is_cuda() { "CUDA allocator peak" } else { "peak RSS" };
    for precision in precisions {
        let math = match (precision, device.is_cuda()) {
            ("bf16", _) => "bf16 autocast, f32 master weights",
            (_, true) => "f32 with TF32 matmuls",
            _ => "f32",
        };
        println!(
            "\ntraining step, {device_name}, {math}; median of {steps} after one warm-up; memory: {memory}\n"
        );
        println!(
            "| model | latent | batch | ours img/s | PyTorch img/s | ours / PyTorch | ours + LPL img/s | LPL time x | peak MB ours / PyTorch | peak MB + LPL |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|---|---:|");
        for preset in ["dit-mini", "dit-s-2", "dit-b-2"] {
            let batch = if preset == "dit-mini" { small } else { large };
            let run = |lpl: &str| {
                json_line(
                    Command::new(&exe)
                        .args(["--case", &format!("{preset}:{lpl}")])
                        .args(common(precision))
                        .output()
                        .unwrap(),
                    preset,
                )
            };
            let (mse, with_lpl) = (run("mse"), run("lpl"));
            let config = dit_config(preset);
            let torch = python.as_ref().and_then(|py| {
                let out = Command::new(py)
                    .arg(&script)
                    .arg(serde_json::to_string(&config).unwrap())
                    .args([batch.to_string(), steps.to_string(), device_name.clone()])
                    .arg(precision)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let v = text.lines().find(|l| l.starts_with('{'));
                let v: Option<serde_json::Value> = v.and_then(|l| serde_json::from_str(l).ok());
                match v {
                    Some(v) if v.get("error").is_none() => Some(v),
                    other => {
                        let why = other.map_or_else(
                            || {
                                String::from_utf8_lossy(&out.stderr)
                                    .lines()
                                    .last()
                                    .unwrap_or("")
                                    .to_string()
                            },
                            |v| v["error"].to_string(),
                        );
                        println!("(PyTorch reference unavailable: {why})");
                        None
                    }
                }
            });
            let ips = |v: &serde_json::Value| batch as f64 * 1000.0 / v["ms"].as_f64().unwrap();
            let (ours, lpl_ips) = (ips(&mse), ips(&with_lpl));
            let torch_ips = torch.as_ref().map(|t| t["images_per_s"].as_f64().unwrap());
            let torch_peak = torch.as_ref().and_then(|t| t["peak_mb"].as_f64());
            let latent = format!("{0}x{0}x{1}", config.sample_size, config.in_channels);
            println!(
                "| {preset} | {latent} | {batch} | {ours:.1} | {} | {} | {lpl_ips:.1} | {:.2} | {:.0} / {} | {:.0} |",
                torch_ips.map_or("n/a".into(), |v| format!("{v:.1}")),
                torch_ips.map_or("n/a".into(), |v| format!("{:.2}", ours / v)),
                ours / lpl_ips,
                mse["peak_mb"].as_f64().unwrap_or(f64::NAN),
                torch_peak.map_or("n/a".into(), |v| format!("{v:.0}")),
                with_lpl["peak_mb"].as_f64().unwrap_or(f64::NAN),
            );
            rows.push(serde_json::json!({
                "model": preset, "latent": latent, "batch": batch, "precision": precision,
                "ours_images_per_s": ours, "pytorch_images_per_s": torch_ips,
                "ours_over_pytorch": torch_ips.map(|v| ours / v),
                "lpl_images_per_s": lpl_ips, "lpl_time_ratio": ours / lpl_ips,
                "ours_peak_mb": mse["peak_mb"], "lpl_peak_mb": with_lpl["peak_mb"],
                "pytorch_peak_mb": torch_peak, "memory": memory,
                "pytorch_threads": torch.as_ref().map(|t| t["threads"].clone()),
            }));
        }
    }
    if python.is_none() {
        println!("\n(no Python next to our libtorch: the PyTorch column is n/a)");
    }
    let out = support::out_dir();
    let json = serde_json::json!({"bench": "train_step", "device": device_name, "steps": steps, "threads": tch::get_num_threads(), "rows": rows});
    std::fs::write(out.join("train_step.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}
