//! `lpl ablate --quick` end to end (what `cargo xtask ablate --quick` runs): killed with
//! SIGKILL once the MSE arm is evaluated, then re-run, it completes only the missing runs
//! (the finished ones keep their files untouched) and writes every report file; a third run
//! reuses everything and takes seconds. An uninterrupted run into another directory gives
//! the same `results.csv` to the last digit (determinism on one machine, and exact resume);
//! one arm trained data-parallel on 2 ranks (`--arm` under torchrun's variables) gives the
//! sequential arm's FD up to float summation order; and the report's provenance flags an arm recorded under other conditions. Skipped, saying
//! so, without Fashion-MNIST or the EfficientNet-Lite0 weights (`cargo xtask test` provides
//! both).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

#[path = "support/chromium.rs"]
#[allow(dead_code)] // the shared helper; this test uses part of it
mod chromium;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

fn ablate(out: &Path) -> Command {
    let mut cmd = Command::new(LPL);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["ablate", "--quick", "--device", "cpu", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // `cargo xtask test` runs this test alone and gives the ablation every CPU (the other
    // tests get one thread each); under plain `cargo test` the inherited settings apply.
    if let Ok(cpus) = std::env::var("LPL_TEST_CPUS") {
        cmd.env("OMP_NUM_THREADS", &cpus).env("MKL_NUM_THREADS", &cpus);
    }
    cmd
}

/// `results.csv` without its last column (the run directory, which names the output dir).
fn results_without_paths(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("results.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// The FD of `arm` (seed 0, eps) in `results.json`.
fn arm_fd(out: &Path, arm: &str) -> f64 {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let row = json["results"].as_array().unwrap().iter().find(|r| r["arm"] == arm).unwrap();
    row["metrics"]["fd"].as_f64().unwrap()
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn quick_ablation_resumes_after_sigkill_reports_and_is_deterministic() {
    lpl_test_assets::Asset::FashionMnist.require();
    lpl_test_assets::Asset::EffNetWeights.require();
    let out = std::env::temp_dir().join(format!("lpl-ablate-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mse_eval = out.join("eps/seed0/mse/eval.json");
    let mut child = ablate(&out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // No deadline of its own: a slow machine is not a failure (nextest ends a hung test).
    while !mse_eval.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ablation ended before the MSE arm was evaluated"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.join("report.html").exists(), "killed before the report");
    let kept = [
        out.join("ae/autoencoder.safetensors"),
        out.join("cache/manifest.json"),
        out.join("eps/pretrain/checkpoints/step-0000150.safetensors"),
        mse_eval.clone(),
    ];
    let before: Vec<SystemTime> = kept.iter().map(|p| modified(p)).collect();
    let done = ablate(&out).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let after: Vec<SystemTime> = kept.iter().map(|p| modified(p)).collect();
    assert_eq!(before, after, "finished stages are reused, not redone");
    assert!(out.join("eps/seed0/lpl/eval.json").is_file(), "the missing arm was run");
    for f in [
        "report.md",
        "report.html",
        "results.csv",
        "results.json",
        "plots/report-spectrum-eps.png",
        "plots/report-loss-eps.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("data:image/png;base64,").count() >= 4, "plots and grids are inlined");
    assert!(html.contains("<table id=\"results\">") && html.contains("--only eps"));
    // and it renders: every plot and grid decodes in headless Chromium
    {
        let browser = lpl_test_assets::Asset::Chromium.require();
        let page = chromium::render(&browser, &out.join("report.html"), &out.join("render"), 3000)
            .unwrap();
        assert_eq!(page.images.len(), html.matches("<img").count());
        assert!(page.images.iter().all(|&(w, h)| w >= 64 && h >= 64), "{:?}", page.images);
        assert!(chromium::ink(&page.screenshot) > 0.05);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let fd = json["results"][1]["metrics"]["fd"].as_f64().unwrap();
    assert!(fd.is_finite() && fd > 0.0);
    assert_eq!(json["rows"][0]["arm"], "lpl");
    // provenance: this build's commit, the machine, the inputs' SHA-256; no warning, since
    // the killed and the resumed invocation ran under the same conditions
    let prov = &json["provenance"];
    assert_eq!(prov["commit"].as_str().unwrap().len(), 40, "{prov}");
    assert!(prov["threads"].as_i64().unwrap() >= 1 && prov["cpu"].is_string());
    for input in ["autoencoder", "cache manifest", "efficientnet-lite0", "run_config"] {
        assert_eq!(prov["inputs"][input].as_str().map(str::len), Some(64), "{input}: {prov}");
    }
    assert_eq!(json["provenance_warnings"].as_array().unwrap().len(), 0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Provenance") && !md.contains("Provenance differs"));

    // determinism: an uninterrupted run, its arms run 2 at a time in separate processes
    // (--jobs 2), gives the same numbers to the last printed digit
    let fresh = out.with_extension("fresh");
    let _ = std::fs::remove_dir_all(&fresh);
    let uninterrupted = ablate(&fresh).args(["--jobs", "2"]).output().unwrap();
    assert!(uninterrupted.status.success(), "{}", String::from_utf8_lossy(&uninterrupted.stderr));
    for arm in ["mse", "lpl", "pixel"] {
        let log = fresh.join(format!("logs/eps-0-{arm}.log"));
        assert!(log.is_file(), "arm {arm} did not run in its own process ({})", log.display());
    }
    assert_eq!(results_without_paths(&out), results_without_paths(&fresh));

    // one arm data-parallel: 2 ranks launched as torchrun launches them, the arm's batch
    // split over them, train the arm the sequential run trained; the report collects it
    let sequential_fd = arm_fd(&fresh, "lpl");
    std::fs::remove_dir_all(fresh.join("eps/seed0/lpl")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = ablate(&fresh);
            cmd.args(["--arm", "eps:0:lpl"])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1");
            cmd.spawn().unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let state = lpl::trainer::run_checkpoint::read_state(
        lpl::trainer::run_checkpoint::list_checkpoints(&fresh.join("eps/seed0/lpl"))
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state.world_size, 2, "the arm trained on 2 ranks");
    let collected = ablate(&fresh).output().unwrap();
    assert!(collected.status.success(), "{}", String::from_utf8_lossy(&collected.stderr));
    let parallel_fd = arm_fd(&fresh, "lpl");
    eprintln!("eps:0:lpl FD: sequential {sequential_fd}, 2 ranks {parallel_fd}");
    // same samples, draws and global batch; only the order of float additions differs (the
    // gradient all-reduce, the split batch), which over the arm's steps moves the weights
    // by rounding noise amplified by training (1.5e-8 of the FD when written), far below the
    // seed-to-seed spread (about 1%)
    assert!(
        (sequential_fd - parallel_fd).abs() <= 1e-5 * sequential_fd,
        "FD {sequential_fd} (sequential) vs {parallel_fd} (2 ranks)"
    );
    std::fs::remove_dir_all(&fresh).unwrap();

    // an arm recorded under other conditions is named at the top of the report
    let eval_path = out.join("eps/seed0/lpl/eval.json");
    let mut eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_path).unwrap()).unwrap();
    eval["provenance"]["threads"] = serde_json::json!(97);
    std::fs::write(&eval_path, serde_json::to_string(&eval).unwrap()).unwrap();

    // everything finished: a re-run only rewrites the report
    let start = Instant::now();
    let again = ablate(&out).output().unwrap();
    assert!(again.status.success());
    assert!(start.elapsed() < Duration::from_secs(180), "re-run took {:?}", start.elapsed());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let warning = md.lines().find(|l| l.starts_with("> - eps seed 0 lpl:")).unwrap_or_else(|| {
        panic!("no provenance warning for the edited arm:\n{md}");
    });
    assert!(warning.contains("threads: ") && warning.contains(" vs 97"), "{warning}");
    assert!(md.find("Provenance differs").unwrap() < md.find("| parameterisation").unwrap());
    std::fs::remove_dir_all(&out).unwrap();
}
