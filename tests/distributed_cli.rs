//! `lpl train` launched as 2 processes with the environment torchrun sets (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), each with half the batch, trains
//! as one process with the whole batch: same weights, EMA and optimiser state after the run,
//! same logged losses, for eps and flow, MSE and MSE + LPL (the LPL mean over the global
//! batch's kept samples), with class labels (label dropout) and flips.
//!
//! Tolerance: the two runs differ only in the order of float additions (a gradient is the
//! average of two half-batch means instead of one mean; reductions inside kernels see
//! different shapes), a relative error of a few f32 ulps (~1e-7) per step, which AdamW's
//! normalised update turns into at most lr (1e-3) per step for a coordinate whose gradient is
//! at rounding level. So: each tensor within 1e-4 relative to its own scale (max |x|), which
//! a real difference in semantics (a different sample, noise draw or normalisation: changes
//! of order lr x steps = 6e-3 on most coordinates) exceeds by far, and the losses within 1e-4
//! relative.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

#[path = "support/tiny_cache.rs"]
mod tiny_cache;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use lpl::trainer::run_checkpoint;
use tch::{Kind, Tensor};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");
const STEPS: usize = 6;

fn write_config(dir: &Path, name: &str, batch: usize, param: &str, lpl: bool) -> PathBuf {
    write_config_steps(dir, name, batch, param, lpl, STEPS, STEPS)
}

fn write_config_steps(
    dir: &Path,
    name: &str,
    batch: usize,
    param: &str,
    lpl: bool,
    steps: usize,
    checkpoint_every: usize,
) -> PathBuf {
    let (ae, cache) = (dir.join("ae.safetensors"), dir.join("cache"));
    let schedule = if param == "flow" { "flow" } else { "sd15" };
    let lpl = if lpl {
        // a gate keeping some samples of each half-batch and not others: the global mean
        // over kept samples is what must come out
        "[loss.lpl]\nnorm = \"pred_stats\"\nmask = true\nmask_source = \"target\"\nlayer_weights = \"inverse_upscale\"\n\
         spatial_reduce = \"masked_mean\"\ndistance = \"l2\"\ngate = { kind = \"snr\", tau = 1.0 }\nbatch_reduce = \"kept\"\npost_quant_conv = true\n"
    } else {
        ""
    };
    let text = format!(
        "output_dir = \"{}\"\nautoencoder = \"{}\"\n[data]\ncache = \"{}\"\nflip = true\n[model]\npreset = \"dit-tiny\"\n\
         [diffusion]\nschedule = \"{schedule}\"\nparameterization = \"{param}\"\n[optim]\nlr = 1e-3\nwarmup_steps = 2\ngrad_clip = 1.0\n\
         [ema]\ndecay = 0.9\n\
         [train]\nsteps = {steps}\nbatch_size = {batch}\nlog_every = 1\ncheckpoint_every = {checkpoint_every}\nkeep_checkpoints = 100\nseed = 11\n{lpl}",
        dir.join(name).display(),
        ae.display(),
        cache.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lpl train --config config [extra]` as rank `rank` of `world`, launched the way torchrun
/// launches it, its output piped.
fn spawn_rank(config: &Path, extra: &[&str], rank: usize, world: usize, port: &str) -> Child {
    Command::new(LPL)
        .args(["train", "--device", "cpu", "--config"])
        .arg(config)
        .args(extra)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `lpl train --config config [extra]` as `world` ranks (one plain process for 1).
fn train(config: &Path, world: usize, extra: &[&str]) {
    if world == 1 {
        let out = Command::new(LPL)
            .args(["train", "--device", "cpu", "--config"])
            .arg(config)
            .args(extra)
            .output()
            .unwrap();
        return check(&out, "the single-process run");
    }
    let port = free_port().to_string();
    let ranks: Vec<_> =
        (0..world).map(|rank| spawn_rank(config, extra, rank, world, &port)).collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        check(&child.wait_with_output().unwrap(), &format!("rank {rank}"));
    }
}

fn lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

fn compare(dir: &Path, param: &str, lpl: bool) {
    let tag = format!("{param}-{}", if lpl { "lpl" } else { "mse" });
    let (one, two) = (format!("{tag}-1x8"), format!("{tag}-2x4"));
    train(&write_config(dir, &one, 8, param, lpl), 1, &[]);
    train(&write_config(dir, &two, 4, param, lpl), 2, &[]);
    let (la, lb) = (losses(&dir.join(&one)), losses(&dir.join(&two)));
    assert_eq!(la.len(), STEPS, "{tag}: rank 0 alone logs, once per step");
    assert_eq!(lb.len(), STEPS, "{tag}: rank 0 alone logs, once per step");
    for (step, (a, b)) in la.iter().zip(&lb).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{tag}: loss at step {} {a} vs {b}", step + 1);
    }
    // every logged term (mse, lpl, the kept and masked fractions, grad_norm) is the global
    // batch's, not rank 0's
    for (a, b) in lines(&dir.join(&one)).iter().zip(&lines(&dir.join(&two))) {
        for (key, va) in a.as_object().unwrap() {
            if key == "samples_per_sec" {
                continue;
            }
            let flat = |v: &serde_json::Value| -> Vec<f64> {
                match v {
                    serde_json::Value::Array(xs) => xs.iter().filter_map(|x| x.as_f64()).collect(),
                    other => other.as_f64().into_iter().collect(),
                }
            };
            let (xa, xb) = (flat(va), flat(&b[key]));
            assert_eq!(xa.len(), xb.len(), "{tag}: {key}");
            for (x, y) in xa.iter().zip(&xb) {
                assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{tag}: {key} {x} vs {y}");
            }
        }
    }
    let load = |run: &str| {
        let (state, tensors) =
            run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join(run), STEPS)).unwrap();
        (state, tensors)
    };
    let ((sa, wa), (sb, wb)) = (load(&one), load(&two));
    assert_eq!((sa.cursor, sa.adamw_step), (sb.cursor, sb.adamw_step), "{tag}: data position");
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let groups = ["model.", "ema.", "adamw."];
    for g in groups {
        assert!(wa.keys().any(|k| k.starts_with(g)), "{tag}: no {g} tensors in the checkpoint");
    }
    let mut worst = (0.0f64, String::new());
    for (k, a) in &wa {
        let b = &wb[k];
        // the attention key bias gets a zero gradient in exact arithmetic (softmax does not
        // change when a constant is added to every logit of a query): both runs hold AdamW's
        // normalisation of rounding noise there, which no tolerance can compare
        if k.contains("to_k.bias") {
            continue;
        }
        if a.kind() != Kind::Float {
            assert!(a.equal(b), "{tag}: {k} differs");
            continue;
        }
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        let diff = (a - b).abs().max().double_value(&[]) / scale;
        if diff > worst.0 {
            worst = (diff, k.clone());
        }
    }
    println!("{tag}: largest relative difference {:.2e} ({})", worst.0, worst.1);
    assert!(worst.0 <= 1e-4, "{tag}: {} differs by {:.2e} of its scale", worst.1, worst.0);
}

#[test]
fn two_ranks_train_as_one_process_with_the_whole_batch() {
    let dir = std::env::temp_dir().join(format!("lpl-ddp-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tiny_cache::setup(&dir, 48, true);
    for (param, lpl) in [("eps", false), ("eps", true), ("flow", false), ("flow", true)] {
        compare(&dir, param, lpl);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_killed_rank_stops_the_other_naming_it_and_a_relaunch_resumes_exactly() {
    const LONG: usize = 200;
    let dir = std::env::temp_dir().join(format!("lpl-ddp-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tiny_cache::setup(&dir, 48, true);
    let straight = write_config_steps(&dir, "straight", 4, "eps", true, LONG, 10);
    train(&straight, 2, &[]);

    let killed = write_config_steps(&dir, "killed", 4, "eps", true, LONG, 10);
    let port = free_port().to_string();
    let mut rank0 = spawn_rank(&killed, &[], 0, 2, &port);
    let mut rank1 = spawn_rank(&killed, &[], 1, 2, &port);
    let first = run_checkpoint::checkpoint_path(&dir.join("killed"), 10);
    let start = Instant::now();
    while !first.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(first.exists(), "no checkpoint at step 10");
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let killed_at = Instant::now();
    // rank 0 stops (it does not hang), non-zero, naming the rank that died
    let waited = loop {
        if let Some(status) = rank0.try_wait().unwrap() {
            break status;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(60), "rank 0 hangs after rank 1 died");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!waited.success(), "rank 0 exited 0 after its peer died:\n{stderr}");
    assert!(stderr.contains("rank 1 is gone"), "{stderr}");
    println!("rank 0 stopped {:?} after the kill: {}", killed_at.elapsed(), stderr.trim_end());
    assert!(
        !run_checkpoint::list_checkpoints(&dir.join("killed"))
            .contains(&run_checkpoint::checkpoint_path(&dir.join("killed"), LONG)),
        "the run finished before the kill: nothing was tested"
    );
    // no torn file: every checkpoint left verifies, and a relaunch resumes exactly
    for c in run_checkpoint::list_checkpoints(&dir.join("killed")) {
        run_checkpoint::load(&c).unwrap();
    }
    train(&killed, 2, &["--resume"]);
    let (_, wa) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("straight"), LONG))
            .unwrap();
    let (_, wb) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("killed"), LONG)).unwrap();
    for (k, v) in &wa {
        assert!(v.equal(&wb[k]), "{k} differs after the relaunch");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `lpl ARGS` as `world` processes with torchrun's variables (one plain process for 1); the
/// outputs in rank order.
fn run_ranks(args: &[&str], world: usize) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<Child> = (0..world)
        .map(|rank| {
            let mut cmd = Command::new(LPL);
            cmd.args(args);
            if world > 1 {
                cmd.env("RANK", rank.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", &port);
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (rank, out) in outs.iter().enumerate() {
        check(out, &format!("rank {rank} of `lpl {}`", args.join(" ")));
    }
    outs
}

#[test]
fn periodic_evaluation_is_sampled_by_every_rank() {
    lpl_test_assets::Asset::EffNetWeights.require();
    let dir = std::env::temp_dir().join(format!("lpl-ddp-periodic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tiny_cache::setup(&dir, 48, true);
    // the folder's test split is every 20th image: 12 real images
    let real = dir.join("real");
    let images = Tensor::rand([240, 1, 16, 16], (Kind::Float, tch::Device::Cpu));
    lpl::data::folder::write_pngs(&images, &real, 0).unwrap();
    let eval = format!(
        "[eval]\nevery = 4\ncount = 10\nbatch = 3\nsampler = {{ sampler = \"ddim\", steps = 4 }}\n\
         guidance = {{ scale = 2.0 }}\ndata = {{ dataset = \"folder\", dir = \"{}\", channels = 1 }}\n",
        real.display()
    );
    let fd = |world: usize, batch: usize| -> f64 {
        let name = format!("w{world}");
        let config = write_config_steps(&dir, &name, batch, "eps", false, 4, 4);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text + &eval).unwrap();
        train(&config, world, &[]);
        let evals: Vec<f64> =
            lines(&dir.join(&name)).iter().filter_map(|l| l["eval"]["fd"].as_f64()).collect();
        assert_eq!(evals.len(), 1, "{name}: one evaluation at step 4");
        evals[0]
    };
    // 10 samples in batches of 3: 2 batches per rank, the last one short; the files the
    // ranks passed their samples through are gone
    let (one, two) = (fd(1, 8), fd(2, 4));
    eprintln!("periodic FD: 1 rank {one}, 2 ranks {two}");
    assert!(
        !dir.join("w2").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".lpl-gather"))
    );
    // the 2-rank weights equal one process's up to float summation order (within 1e-4 of
    // their scale, see the top of this file), so the samples and the FD agree that closely,
    // not bit for bit (4e-8 relative here); a rank sampling the wrong batches (other noise,
    // other labels) moves this FD by percents
    assert!((one - two).abs() <= 1e-4 * one.abs(), "FD {one} (1 rank) vs {two} (2 ranks)");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sampling_and_evaluation_split_over_ranks_equal_one_process() {
    lpl_test_assets::Asset::EffNetWeights.require();
    let dir = std::env::temp_dir().join(format!("lpl-ddp-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tiny_cache::setup(&dir, 48, true);
    train(&write_config_steps(&dir, "run", 8, "eps", false, 4, 4), 1, &[]);
    let run = dir.join("run");
    let run = run.to_str().unwrap();
    // a stochastic sampler (DDPM: step noise) with guidance, 10 samples in batches of 3
    // (4 batches: 2 per rank, the last one short)
    let sampling = [
        "--device",
        "cpu",
        "--count",
        "10",
        "--batch",
        "3",
        "--sampler",
        "ddpm",
        "--steps",
        "5",
        "--guidance",
        "2",
    ];
    for world in [1, 2] {
        let npz = dir.join(format!("samples-{world}.npz"));
        let mut args = vec!["sample", "--run", run, "--npz", npz.to_str().unwrap()];
        args.extend(sampling);
        let outs = run_ranks(&args, world);
        assert!(String::from_utf8_lossy(&outs[0].stdout).contains("10 samples"));
    }
    let read =
        |w: usize| lpl::tensor_io::npz::read_npz(&dir.join(format!("samples-{w}.npz"))).unwrap();
    let (one, two) = (read(1), read(2));
    assert_eq!(one["arr_0"].size(), [10, 16, 16, 3]);
    assert!(one["arr_0"].equal(&two["arr_0"]), "the 2-rank samples differ from one process's");
    assert!(one["arr_1"].equal(&two["arr_1"]));
    assert!(
        !dir.read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".lpl-gather"))
    );

    // evaluation: FD, precision/recall and spectra of the same samples
    let real = dir.join("real");
    let images = Tensor::rand([24, 1, 16, 16], (Kind::Float, tch::Device::Cpu));
    lpl::data::folder::write_pngs(&images, &real, 0).unwrap();
    let metrics = |world: usize| -> serde_json::Value {
        let mut args = vec!["eval", "--run", run, "--real", real.to_str().unwrap()];
        args.extend(sampling);
        let outs = run_ranks(&args, world);
        let stdout = String::from_utf8_lossy(&outs[0].stdout).to_string();
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["metrics"].clone()
    };
    let (m1, m2) = (metrics(1), metrics(2));
    for key in ["fd", "precision", "recall", "spectrum_low", "spectrum_high"] {
        let (a, b) = (m1[key].as_f64().unwrap(), m2[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-12), "{key}: {a} vs {b}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
