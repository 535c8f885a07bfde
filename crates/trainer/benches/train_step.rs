//! Training-step throughput (`cargo xtask bench` runs it): one full step (noising, DiT
//! forward, MSE on eps, backward, our AdamW) in images/s and peak memory, with and without
//! the paper's LPL, for the tiny default (DiT-mini at 8x8x4, the Fashion-MNIST AE's decoder)
//! and DiT-S/2 and DiT-B/2 at 32x32x4 (an SD-architecture decoder, random weights); and the
//! same MSE step in PyTorch (diffusers' DiTTransformer2DModel; benches/pytorch_step.py) with
//! the torch install that provides our libtorch, in the same invocation, as the anchors a
//! user who cares about speed would pick: eager with `AdamW(fused=True)` and the model under
//! `torch.compile` (default mode). Ratios ours / each. Beside each throughput, the model FLOP
//! utilisation: analytic FLOPs of the step (`support::flops`: DiT forward and backward, the
//! LPL decoder branch for the kept fraction) per second over the best 2048^3 matmul of the
//! same device and precision. Cases are interleaved over `--rounds` rounds (each a fresh
//! process per case) and reported as the median with the min-max spread. Ours is the mean
//! step (the gated LPL keeps a varying number of samples per step), MFU over those steps.
//!
//! `cargo bench -p lpl-trainer --bench train_step [-- --steps N --rounds R --device cpu|cuda
//! --batch-small B --batch-large B --precision f32|bf16|all --models dit-mini,dit-s-2]`. Precision: `f32` (on CUDA
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
    let mut kept = Vec::new();
    // `--profile DIR`: libtorch's profiler over the measured steps (not the warm-up)
    let profile_to = std::env::var_os(PROFILE_ENV)
        .map(|d| PathBuf::from(d).join(format!("ours-{preset}.json")))
        .filter(|_| !lpl);
    let mut profile = None;
    for step in 0..=steps {
        if step == 1 && profile_to.is_some() {
            profile = Some(lpl_torch_ext::profiler::Profile::start(device.is_cuda()).unwrap());
        }
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
            let out = lpl.loss(&x0, &z0, &t, &schedule, Parameterization::Eps).unwrap();
            if step > 0 {
                kept.push(f64::try_from(&out.kept_fraction).unwrap());
            }
            loss += out.total;
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
    if let (Some(p), Some(path)) = (profile, &profile_to) {
        p.save(path).unwrap();
    }
    // The mean step: with the SNR gate the LPL's cost varies from step to step with how many
    // samples it keeps (often none at a small batch), so a median step would hide it. FLOPs
    // of the measured steps: the DiT's, plus the LPL branch for the samples each step kept.
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    let mut flops = support::flops::dit_step(&config, batch);
    if let Some(lpl) = &loss_fn {
        let kept_samples = kept.iter().sum::<f64>() * batch as f64 / kept.len().max(1) as f64;
        let depth = lpl.plan().len() - 1;
        let hw = (s * s) as f64;
        flops += support::flops::lpl_branch(&ae_config(preset), hw, depth, kept_samples);
    }
    println!("{{\"ms\": {mean_ms}, \"peak_mb\": {}, \"flops\": {flops}}}", peak_mb(device));
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

/// The median and the min-max spread of some measurements.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// `median (min-max)` to `digits` decimals.
fn spread(values: &[f64], digits: usize) -> String {
    let (m, lo, hi) = summary(values);
    if m.is_nan() {
        return "n/a".into();
    }
    if values.len() < 2 {
        return format!("{m:.digits$}");
    }
    format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
}

/// The directory `--profile` writes the traces to, passed to each measured process.
const PROFILE_ENV: &str = "LPL_BENCH_PROFILE";

/// `--profile DIR`: one profiled run of each side per model (ours, PyTorch eager with fused
/// AdamW, torch.compile), their Chrome traces in DIR, and where each side's step time goes:
/// the operators by self time per step, side by side. Profiling slows every side, so no
/// throughput is reported in this mode.
fn profile_sides(
    dir: &Path,
    presets: &[&str],
    steps: usize,
    run_ours: &dyn Fn(&str),
    run_torch: &dyn Fn(&str, &str) -> Result<serde_json::Value, String>,
) {
    use lpl_trainer::profile_summary::ProfileSummary;
    for preset in presets {
        run_ours(preset);
        let mut sides = vec![("ours", dir.join(format!("ours-{preset}.json")))];
        for mode in ["fused", "compile"] {
            match run_torch(preset, mode) {
                Ok(_) => sides.push((mode, dir.join(format!("pytorch-{mode}-{preset}.json")))),
                Err(why) => println!("(PyTorch {mode} unavailable: {why})"),
            }
        }
        let summaries: Vec<(&str, ProfileSummary)> = sides
            .iter()
            .map(|(side, path)| (*side, ProfileSummary::from_file(path).unwrap()))
            .collect();
        let per_step = |s: &ProfileSummary, name: &str| {
            s.cpu_ops.iter().find(|o| o.name == name).map_or(0.0, |o| o.self_ms / steps as f64)
        };
        println!("\n{preset}: self ms per step of the operators (profiled, {steps} steps)\n");
        let header: Vec<String> = summaries.iter().map(|(side, _)| side.to_string()).collect();
        println!("| operator | {} |", header.join(" | "));
        println!("|---|{}", "---:|".repeat(summaries.len()));
        let mut names: Vec<String> = Vec::new();
        for (_, s) in &summaries {
            for o in s.cpu_ops.iter().take(12) {
                if !names.contains(&o.name) {
                    names.push(o.name.clone());
                }
            }
        }
        for name in names {
            let cells: Vec<String> =
                summaries.iter().map(|(_, s)| format!("{:.1}", per_step(s, &name))).collect();
            println!("| `{name}` | {} |", cells.join(" | "));
        }
        let totals: Vec<String> = summaries
            .iter()
            .map(|(_, s)| format!("{:.1}", s.cpu_self_ms() / steps as f64))
            .collect();
        println!("| all operators | {} |", totals.join(" | "));
    }
}

fn main() {
    let device_name = arg("--device", "cpu");
    let device = support::device(&device_name);
    let steps: usize = arg("--steps", if device.is_cuda() { "10" } else { "3" }).parse().unwrap();
    let rounds: usize = arg("--rounds", if device.is_cuda() { "2" } else { "3" }).parse().unwrap();
    let small: i64 = arg("--batch-small", "128").parse().unwrap();
    let large: i64 =
        arg("--batch-large", if device.is_cuda() { "64" } else { "4" }).parse().unwrap();
    let precision = arg("--precision", if device.is_cuda() { "all" } else { "f32" });
    let models = arg("--models", "dit-mini,dit-s-2,dit-b-2");
    if let Some(case) =
        std::env::args().position(|a| a == "--case").and_then(|i| std::env::args().nth(i + 1))
    {
        if case == "peak" {
            let kind = if precision == "bf16" { Kind::BFloat16 } else { Kind::Float };
            if device.is_cuda() && precision != "bf16" {
                lpl_torch_ext::tf32::set(true).unwrap();
            }
            println!("{{\"flops_per_s\": {}}}", support::flops::matmul_peak(device, kind));
            return;
        }
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
    let profile_dir = std::env::args()
        .position(|a| a == "--profile")
        .and_then(|i| std::env::args().nth(i + 1))
        .map(PathBuf::from);
    let mut rows = Vec::new();
    let memory = if device.is_cuda() { "CUDA allocator peak" } else { "peak RSS" };
    let presets: Vec<&str> = models.split(',').collect();
    for precision in precisions {
        let math = match (precision, device.is_cuda()) {
            ("bf16", _) => "bf16 autocast, f32 master weights",
            (_, true) => "f32 with TF32 matmuls",
            _ => "f32",
        };
        let peak_of = || -> f64 {
            let out = Command::new(&exe).args(["--case", "peak"]).args(common(precision)).output();
            json_line(out.unwrap(), "peak")["flops_per_s"].as_f64().unwrap()
        };
        // PyTorch: the value of `key` per round, or why it is unavailable
        let torch_run = |preset: &str, mode: &str| -> Result<serde_json::Value, String> {
            let py = python.as_ref().ok_or("no Python next to our libtorch")?;
            let batch = if preset == "dit-mini" { small } else { large };
            let mut config = serde_json::to_value(dit_config(preset)).unwrap();
            config["_preset"] = preset.into();
            let out = Command::new(py)
                .arg(&script)
                .arg(config.to_string())
                .envs(profile_dir.iter().map(|d| (PROFILE_ENV, d)))
                .args([batch.to_string(), steps.to_string(), device_name.clone()])
                .args([precision, mode])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v = text.lines().find(|l| l.starts_with('{'));
            match v.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                Some(v) if v.get("error").is_none() => Ok(v),
                Some(v) => Err(v["error"].to_string()),
                None => Err(String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no output")
                    .to_string()),
            }
        };
        if let Some(dir) = &profile_dir {
            std::fs::create_dir_all(dir).unwrap();
            let run_ours = |preset: &str| {
                let out = Command::new(&exe)
                    .args(["--case", &format!("{preset}:mse")])
                    .args(common(precision))
                    .env(PROFILE_ENV, dir)
                    .output()
                    .unwrap();
                json_line(out, preset);
            };
            profile_sides(dir, &presets, steps, &run_ours, &torch_run);
            continue;
        }
        // measurements[preset][what] over rounds
        let mut m: std::collections::BTreeMap<(String, &str), Vec<f64>> = Default::default();
        let mut peaks = Vec::new();
        let mut notes = std::collections::BTreeSet::new();
        for round in 0..rounds {
            eprintln!("round {} of {rounds} ({precision})", round + 1);
            peaks.push(peak_of());
            for preset in &presets {
                let batch = if *preset == "dit-mini" { small } else { large } as f64;
                for lpl in ["mse", "lpl"] {
                    let v = json_line(
                        Command::new(&exe)
                            .args(["--case", &format!("{preset}:{lpl}")])
                            .args(common(precision))
                            .output()
                            .unwrap(),
                        preset,
                    );
                    let ms = v["ms"].as_f64().unwrap();
                    let key = |what| (preset.to_string(), what);
                    m.entry(key(if lpl == "mse" { "ours" } else { "lpl" }))
                        .or_default()
                        .push(batch * 1000.0 / ms);
                    m.entry(key(if lpl == "mse" { "ours_flops" } else { "lpl_flops" }))
                        .or_default()
                        .push(v["flops"].as_f64().unwrap() * 1000.0 / ms);
                    m.entry(key(if lpl == "mse" { "ours_mb" } else { "lpl_mb" }))
                        .or_default()
                        .push(v["peak_mb"].as_f64().unwrap_or(f64::NAN));
                }
                for mode in ["fused", "compile"] {
                    match torch_run(preset, mode) {
                        Ok(v) => {
                            let key = (preset.to_string(), mode);
                            m.entry(key).or_default().push(v["images_per_s"].as_f64().unwrap());
                            let mb = (
                                preset.to_string(),
                                if mode == "fused" { "fused_mb" } else { "compile_mb" },
                            );
                            m.entry(mb)
                                .or_default()
                                .push(v["peak_mb"].as_f64().unwrap_or(f64::NAN));
                        }
                        Err(why) => {
                            notes.insert(format!("PyTorch {mode} unavailable: {why}"));
                        }
                    }
                }
            }
        }
        let (peak, _, _) = summary(&peaks);
        println!(
            "\ntraining step, {device_name}, {math}; mean of {steps} steps after warm-up per process \
             (ours; PyTorch: median), {rounds} interleaved rounds: median (min-max); matmul peak \
             {:.1} GFLOP/s; memory: {memory}\n",
            peak / 1e9
        );
        println!(
            "| model | batch | ours img/s | MFU | PyTorch fused img/s | ours / fused | torch.compile img/s | ours / compile | ours + LPL img/s | MFU + LPL | LPL time x | peak MB ours / fused / + LPL |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        let get = |preset: &str, what: &str| {
            m.get(&(preset.to_string(), what)).cloned().unwrap_or_default()
        };
        for preset in &presets {
            let batch = if *preset == "dit-mini" { small } else { large };
            let ours = get(preset, "ours");
            let lpl = get(preset, "lpl");
            let (fused, compiled) = (get(preset, "fused"), get(preset, "compile"));
            // ratios per round (the rounds are interleaved, so round k of each is comparable)
            let ratio =
                |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();
            let mfu = |flops: &[f64]| flops.iter().map(|f| 100.0 * f / peak).collect::<Vec<_>>();
            println!(
                "| {preset} | {batch} | {} | {}% | {} | {} | {} | {} | {} | {}% | {} | {:.0} / {} / {:.0} |",
                spread(&ours, 1),
                spread(&mfu(&get(preset, "ours_flops")), 1),
                spread(&fused, 1),
                spread(&ratio(&ours, &fused), 2),
                spread(&compiled, 1),
                spread(&ratio(&ours, &compiled), 2),
                spread(&lpl, 1),
                spread(&mfu(&get(preset, "lpl_flops")), 1),
                spread(&ratio(&ours, &lpl), 2),
                summary(&get(preset, "ours_mb")).0,
                spread(&get(preset, "fused_mb"), 0),
                summary(&get(preset, "lpl_mb")).0,
            );
            let config = dit_config(preset);
            rows.push(serde_json::json!({
                "model": preset, "batch": batch, "precision": precision,
                "latent": format!("{0}x{0}x{1}", config.sample_size, config.in_channels),
                "ours_images_per_s": ours, "lpl_images_per_s": lpl,
                "pytorch_fused_images_per_s": fused, "pytorch_compile_images_per_s": compiled,
                "ours_over_fused": ratio(&ours, &fused), "ours_over_compile": ratio(&ours, &compiled),
                "ours_mfu_percent": mfu(&get(preset, "ours_flops")),
                "lpl_mfu_percent": mfu(&get(preset, "lpl_flops")),
                "step_flops": support::flops::dit_step(&config, batch),
                "ours_peak_mb": get(preset, "ours_mb"), "lpl_peak_mb": get(preset, "lpl_mb"),
                "pytorch_fused_peak_mb": get(preset, "fused_mb"),
                "pytorch_compile_peak_mb": get(preset, "compile_mb"), "memory": memory,
                "matmul_peak_flops_per_s": peaks,
            }));
        }
        for note in notes {
            println!("({note})");
        }
    }
    let out = support::out_dir();
    let json = serde_json::json!({"bench": "train_step", "device": device_name, "steps": steps, "rounds": rounds, "threads": tch::get_num_threads(), "rows": rows});
    std::fs::write(out.join("train_step.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}
