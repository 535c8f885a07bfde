//! Data-parallel training on the CPU over Gloo (`cargo xtask bench` runs it): the training
//! step (DiT forward, MSE, backward, the gradient all-reduce in `[distributed] bucket_mb`
//! buckets, AdamW) at world size 1 with the global batch against world size 2 with half each
//! (2 processes on one machine), and the all-reduce alone for the model's gradient size in
//! GB/s (bytes of the gradient per second per rank, as `torch.distributed` benchmarks
//! report bus bandwidth for 2 ranks). Each world size runs in fresh processes, `--rounds`
//! rounds interleaved; the median and the min-max spread. On one 2-core machine the two
//! ranks share the cores (each gets `cores / 2` threads): the figure is the engine's
//! overhead, not a speed-up.
//!
//! `cargo bench -p lpl-trainer --bench distributed [-- --model dit-mini --batch 64 --steps 10
//! --rounds 3]`. Writes `target/bench/distributed.json` (or `$LPL_BENCH_OUT/...`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

#[allow(dead_code)] // the benches' shared helpers; this one uses a few
mod support;

use std::process::Command;
use std::time::Instant;

use lpl_denoiser::{Conditioning, Denoiser, Dit, DitConfig};
use lpl_schedulers::NoiseSchedule;
use lpl_trainer::adamw::{AdamW, AdamWConfig};
use lpl_trainer::distributed::{DistributedConfig, Launch, Launcher, World};
use support::arg;
use tch::{Device, Kind, Tensor};

const ROLE: &str = "LPL_BENCH_RANK";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One rank: prints `{"step_ms": ..., "allreduce_ms": ..., "grad_mb": ...}` (rank 0).
fn rank(model: &str, batch: i64, steps: usize, rank: usize, world: usize, port: u16) {
    let launch = Launch {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: Launcher::Torchrun,
    };
    let w = if world == 1 {
        World::single()
    } else {
        let config = DistributedConfig { timeout_s: 120.0, ..DistributedConfig::default() };
        World::join(&launch, &config, Device::Cpu).unwrap()
    };
    tch::manual_seed(0);
    let config = DitConfig::preset(model).unwrap();
    let dit = Dit::new(&config, Device::Cpu, Kind::Float).unwrap();
    w.broadcast_from_main(&dit.var_store().trainable_variables()).unwrap();
    let mut opt = AdamW::new(dit.var_store(), AdamWConfig::default()).unwrap();
    let schedule = NoiseSchedule::preset("dit").unwrap();
    let (c, s) = (config.in_channels, config.sample_size);
    let classes = config.num_embeds_ada_norm.unwrap_or(10);
    let (mut step_ms, mut reduce_ms) = (Vec::new(), Vec::new());
    for step in 0..=steps {
        tch::manual_seed((step * world + rank) as i64);
        let z0 = Tensor::randn([batch, c, s, s], (Kind::Float, Device::Cpu));
        let eps = z0.randn_like();
        let t = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
        let labels = Tensor::randint(classes, [batch], (Kind::Int64, Device::Cpu));
        w.barrier().unwrap();
        let start = Instant::now();
        let z_t = schedule.add_noise(&z0, &eps, &t).unwrap();
        let pred = dit
            .forward_t(&z_t, &schedule.model_time(&t).unwrap(), &Conditioning::labels(labels), true)
            .unwrap();
        opt.zero_grad();
        pred.mse_loss(&eps, tch::Reduction::Mean).backward();
        let reduce = Instant::now();
        w.average_gradients(&opt.grads()).unwrap();
        let reduced = reduce.elapsed();
        opt.step(1e-4).unwrap();
        if step > 0 {
            step_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            reduce_ms.push(reduced.as_secs_f64() * 1000.0);
        }
    }
    let grad_bytes: usize = opt.grads().iter().map(|g| g.numel() * 4).sum();
    if rank == 0 {
        println!(
            "{{\"step_ms\": {}, \"allreduce_ms\": {}, \"grad_mb\": {}}}",
            median(&mut step_ms),
            median(&mut reduce_ms),
            grad_bytes as f64 / 1e6
        );
    }
}

/// Runs world size `world` as fresh processes; rank 0's figures.
fn run(model: &str, global_batch: i64, steps: usize, world: usize) -> serde_json::Value {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = (cores / world).max(1).to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(&exe)
                .env(
                    ROLE,
                    format!("{model}:{}:{steps}:{r}:{world}:{port}", global_batch / world as i64),
                )
                .env("OMP_NUM_THREADS", &threads)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert!(outs.iter().all(|o| o.status.success()), "a rank failed");
    let text = String::from_utf8_lossy(&outs[0].stdout).to_string();
    serde_json::from_str(text.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap()
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let p: Vec<&str> = role.split(':').collect();
        return rank(
            p[0],
            p[1].parse().unwrap(),
            p[2].parse().unwrap(),
            p[3].parse().unwrap(),
            p[4].parse().unwrap(),
            p[5].parse().unwrap(),
        );
    }
    if !lpl_torch_ext::distributed::has_gloo() {
        eprintln!(
            "distributed bench skipped: this build has no Gloo (install libgloo-dev and rebuild)"
        );
        return;
    }
    let model = arg("--model", "dit-mini");
    let batch: i64 = arg("--batch", "64").parse().unwrap();
    let steps: usize = arg("--steps", "10").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let mut figures: Vec<Vec<serde_json::Value>> = vec![Vec::new(), Vec::new()];
    let started = Instant::now();
    for _ in 0..rounds {
        for (i, world) in [1, 2].into_iter().enumerate() {
            figures[i].push(run(&model, batch, steps, world));
        }
    }
    let stat = |i: usize, key: &str| -> (f64, f64, f64) {
        let mut v: Vec<f64> = figures[i].iter().map(|f| f[key].as_f64().unwrap()).collect();
        let (lo, hi) = (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        (median(&mut v), lo, hi)
    };
    let grad_mb = figures[1][0]["grad_mb"].as_f64().unwrap();
    let (s1, s1lo, s1hi) = stat(0, "step_ms");
    let (s2, s2lo, s2hi) = stat(1, "step_ms");
    let (r2, r2lo, r2hi) = stat(1, "allreduce_ms");
    println!(
        "distributed (Gloo, CPU): {model}, global batch {batch}, {steps} steps x {rounds} rounds, gradient {grad_mb:.1} MB"
    );
    println!(
        "| world | batch per rank | step ms (median, min-max) | all-reduce ms | all-reduce GB/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| 1 | {batch} | {s1:.1} ({s1lo:.1}-{s1hi:.1}) | - | - |");
    println!(
        "| 2 | {} | {s2:.1} ({s2lo:.1}-{s2hi:.1}) | {r2:.1} ({r2lo:.1}-{r2hi:.1}) | {:.2} |",
        batch / 2,
        grad_mb / 1e3 / (r2 / 1e3)
    );
    let json = serde_json::json!({
        "model": model, "global_batch": batch, "steps": steps, "rounds": rounds, "grad_mb": grad_mb,
        "world1": figures[0], "world2": figures[1],
        "wall_s": started.elapsed().as_secs_f64(),
    });
    let out =
        std::env::var_os("LPL_BENCH_OUT").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench")
        });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("distributed.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}
