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
//! A third case, world size 1 *in a process group of one* (the gradient all-reduce and the
//! barriers run, over Gloo on the CPU and NCCL on CUDA), against world size 1 without a
//! group, is the engine's fixed overhead (torch DDP's "world size 1 overhead"). With
//! `--device cuda` the ranks train on `cuda:RANK` (world size 2 only with two GPUs).
//!
//! `cargo bench -p lpl-trainer --bench distributed [-- --model dit-mini --batch 64 --steps 10
//! --rounds 3 --device cpu]`. Writes `target/bench/distributed.json` (or
//! `$LPL_BENCH_OUT/...`).

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

/// A case of the bench: `world` ranks, in a process group (`joined`) or, for one rank,
/// without.
#[derive(Clone, Copy)]
struct Case {
    world: usize,
    joined: bool,
}

impl Case {
    fn name(self) -> &'static str {
        match (self.world, self.joined) {
            (1, false) => "world1",
            (1, true) => "group1",
            _ => "world2",
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One rank: prints `{"step_ms": ..., "allreduce_ms": ..., "grad_mb": ...}` (rank 0).
fn rank(model: &str, batch: i64, steps: usize, rank: usize, case: Case, port: u16, cuda: bool) {
    let world = case.world;
    let device = if cuda { Device::Cuda(rank) } else { Device::Cpu };
    let launch = Launch {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: Launcher::Torchrun,
    };
    let w = if case.joined {
        let config = DistributedConfig { timeout_s: 120.0, ..DistributedConfig::default() };
        // the engine of the device, as `lpl train` picks it
        World::join(&launch, &config, device).unwrap()
    } else {
        World::single()
    };
    tch::manual_seed(0);
    let config = DitConfig::preset(model).unwrap();
    let dit = Dit::new(&config, device, Kind::Float).unwrap();
    w.broadcast_from_main(&dit.var_store().trainable_variables()).unwrap();
    let mut opt = AdamW::new(dit.var_store(), AdamWConfig::default()).unwrap();
    let schedule = NoiseSchedule::preset("dit").unwrap();
    let (c, s) = (config.in_channels, config.sample_size);
    let classes = config.num_embeds_ada_norm.unwrap_or(10);
    let (mut step_ms, mut reduce_ms) = (Vec::new(), Vec::new());
    for step in 0..=steps {
        tch::manual_seed((step * world + rank) as i64);
        let z0 = Tensor::randn([batch, c, s, s], (Kind::Float, device));
        let eps = z0.randn_like();
        let t = Tensor::randint(1000, [batch], (Kind::Int64, device));
        let labels = Tensor::randint(classes, [batch], (Kind::Int64, device));
        w.barrier().unwrap();
        sync(device);
        let start = Instant::now();
        let z_t = schedule.add_noise(&z0, &eps, &t).unwrap();
        let pred = dit
            .forward_t(&z_t, &schedule.model_time(&t).unwrap(), &Conditioning::labels(labels), true)
            .unwrap();
        opt.zero_grad();
        pred.mse_loss(&eps, tch::Reduction::Mean).backward();
        sync(device);
        let reduce = Instant::now();
        w.average_gradients(&opt.grads()).unwrap();
        sync(device);
        let reduced = reduce.elapsed();
        opt.step(1e-4).unwrap();
        sync(device);
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

/// Runs `case` as fresh processes; rank 0's figures.
fn run(model: &str, global_batch: i64, steps: usize, case: Case, cuda: bool) -> serde_json::Value {
    let world = case.world;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = (cores / world).max(1).to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(&exe)
                .env(
                    ROLE,
                    format!(
                        "{model}:{}:{steps}:{r}:{world}:{port}:{}:{}",
                        global_batch / world as i64,
                        case.joined,
                        cuda
                    ),
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
        let case = Case { world: p[4].parse().unwrap(), joined: p[6].parse().unwrap() };
        return rank(
            p[0],
            p[1].parse().unwrap(),
            p[2].parse().unwrap(),
            p[3].parse().unwrap(),
            case,
            p[5].parse().unwrap(),
            p[7].parse().unwrap(),
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
    let cuda = match arg("--device", "cpu").as_str() {
        "cpu" => false,
        "cuda" => true,
        other => panic!("--device cpu or cuda, got {other}"),
    };
    let engine = if cuda { "NCCL, CUDA" } else { "Gloo, CPU" };
    if cuda && !lpl_torch_ext::distributed::has_nccl() {
        eprintln!("distributed bench on CUDA skipped: this build has no NCCL");
        return;
    }
    let mut cases = vec![Case { world: 1, joined: false }, Case { world: 1, joined: true }];
    // two ranks need two devices on CUDA (NCCL refuses two ranks on one GPU)
    if !cuda || tch::Cuda::device_count() >= 2 {
        cases.push(Case { world: 2, joined: true });
    }
    let mut figures: Vec<Vec<serde_json::Value>> = vec![Vec::new(); cases.len()];
    let started = Instant::now();
    for _ in 0..rounds {
        for (i, &case) in cases.iter().enumerate() {
            figures[i].push(run(&model, batch, steps, case, cuda));
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
    println!(
        "distributed ({engine}): {model}, global batch {batch}, {steps} steps x {rounds} rounds, gradient {grad_mb:.1} MB"
    );
    println!(
        "| world | process group | batch per rank | step ms (median, min-max) | x no group | all-reduce ms | all-reduce GB/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let (base, _, _) = stat(0, "step_ms");
    let mut json = serde_json::json!({
        "model": model, "global_batch": batch, "steps": steps, "rounds": rounds,
        "grad_mb": grad_mb, "device": if cuda { "cuda" } else { "cpu" },
    });
    for (i, case) in cases.iter().enumerate() {
        let (s, lo, hi) = stat(i, "step_ms");
        let reduce = if case.joined {
            let (r, rlo, rhi) = stat(i, "allreduce_ms");
            format!("{r:.1} ({rlo:.1}-{rhi:.1}) | {:.2}", grad_mb / 1e3 / (r / 1e3))
        } else {
            "- | -".to_string()
        };
        println!(
            "| {} | {} | {} | {s:.1} ({lo:.1}-{hi:.1}) | {:.3} | {reduce} |",
            case.world,
            if case.joined { engine.split(',').next().unwrap_or(engine) } else { "none" },
            batch / case.world as i64,
            s / base
        );
        json[case.name()] = serde_json::Value::from(figures[i].clone());
    }
    json["wall_s"] = started.elapsed().as_secs_f64().into();
    let out =
        std::env::var_os("LPL_BENCH_OUT").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench")
        });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("distributed.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}
