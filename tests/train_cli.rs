//! `lpl train` killed with SIGKILL after a checkpoint and resumed with `--resume` repeats the
//! uninterrupted run exactly: the same loss at every step after the checkpoint, the same
//! final weights. Also `lpl sample` on the result.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

#[path = "support/tiny_cache.rs"]
mod tiny_cache;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lpl::trainer::run_checkpoint;
use tch::Kind;

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

fn write_config(dir: &Path, name: &str, ae: &Path, cache: &Path) -> PathBuf {
    let text = format!(
        "output_dir = \"{}\"\nautoencoder = \"{}\"\n[data]\ncache = \"{}\"\n[model]\npreset = \"dit-tiny\"\n\
         [diffusion]\nschedule = \"sd15\"\nparameterization = \"eps\"\n[optim]\nlr = 1e-3\n\
         [train]\nsteps = 60\nbatch_size = 16\nlog_every = 1\ncheckpoint_every = 20\nkeep_checkpoints = 5\nseed = 3\n\
         [loss.lpl]\nnorm = \"pred_stats\"\nmask = true\nmask_source = \"target\"\nlayer_weights = \"inverse_upscale\"\n\
         spatial_reduce = \"masked_mean\"\ndistance = \"l2\"\ngate = {{ kind = \"snr\", tau = 3.0 }}\nbatch_reduce = \"kept\"\npost_quant_conv = true\n",
        dir.join(name).display(),
        ae.display(),
        cache.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn losses(run: &Path) -> BTreeMap<u64, u64> {
    // the last line per step wins: a killed run may have logged steps the resumed one redoes
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits()))
        .collect()
}

#[test]
fn sigkill_then_resume_is_exact() {
    let dir = std::env::temp_dir().join(format!("lpl-train-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ae, cache) = tiny_cache::setup(&dir, 96, false);
    let straight = write_config(&dir, "straight", &ae, &cache);
    let out = Command::new(LPL)
        .args(["train", "--device", "cpu", "--config"])
        .arg(&straight)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let killed = write_config(&dir, "killed", &ae, &cache);
    let mut child = Command::new(LPL)
        .args(["train", "--device", "cpu", "--config"])
        .arg(&killed)
        .spawn()
        .unwrap();
    let first = run_checkpoint::checkpoint_path(&dir.join("killed"), 20);
    let start = Instant::now();
    while !first.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(first.exists(), "no checkpoint at step 20");
    // resume from the step-20 checkpoint wherever the kill landed
    for later in run_checkpoint::list_checkpoints(&dir.join("killed")) {
        if later != first {
            std::fs::remove_file(later).unwrap();
        }
    }
    let out = Command::new(LPL)
        .args(["train", "--device", "cpu", "--resume", "--config"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (a, b) = (losses(&dir.join("straight")), losses(&dir.join("killed")));
    for step in 21..=60 {
        assert_eq!(a[&step], b[&step], "loss differs at step {step}");
    }
    let (_, wa) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("straight"), 60)).unwrap();
    let (_, wb) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("killed"), 60)).unwrap();
    for (k, v) in &wa {
        assert!(v.equal(&wb[k]), "{k} differs");
    }

    let grid = dir.join("grid.png");
    let out = Command::new(LPL)
        .args([
            "sample",
            "--device",
            "cpu",
            "--count",
            "6",
            "--steps",
            "5",
            "--guidance",
            "2",
            "--run",
        ])
        .arg(dir.join("straight"))
        .arg("--out")
        .arg(&grid)
        .arg("--npz")
        .arg(dir.join("samples.npz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(image::open(&grid).is_ok());
    // the ADM layout: arr_0 uint8 (N, H, W, 3) (this autoencoder's grey images as RGB),
    // arr_1 the class labels cycling 0, 1, 2
    let npz = lpl::tensor_io::npz::read_npz(&dir.join("samples.npz")).unwrap();
    assert_eq!(npz["arr_0"].kind(), Kind::Uint8);
    assert_eq!(npz["arr_0"].size(), [6, 16, 16, 3]);
    assert_eq!(Vec::<i64>::try_from(&npz["arr_1"]).unwrap(), [0, 1, 2, 0, 1, 2]);
    std::fs::remove_dir_all(dir).unwrap();
}
