//! `lpl ablate --quick` end to end (what `cargo xtask ablate --quick` runs): killed with
//! SIGKILL once the MSE arm is evaluated, then re-run, it completes only the missing runs
//! (the finished ones keep their files untouched) and writes every report file; a third run
//! reuses everything and takes seconds. Skipped, saying so, without Fashion-MNIST or the
//! EfficientNet-Lite0 weights (`cargo xtask test` provides both).

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
    cmd
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn quick_ablation_resumes_after_sigkill_and_reports() {
    if lpl::data::FashionMnist::locate(None).is_err()
        || !lpl::trainer::evaluation::default_effnet_weights().is_some_and(|p| p.is_file())
    {
        println!("SKIPPED: needs Fashion-MNIST and the EfficientNet-Lite0 weights");
        return;
    }
    let out = std::env::temp_dir().join(format!("lpl-ablate-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mse_eval = out.join("eps/seed0/mse/eval.json");
    let mut child = ablate(&out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    while !mse_eval.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ablation ended before the MSE arm was evaluated"
        );
        assert!(Instant::now() < deadline, "no MSE evaluation after 15 minutes");
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
    // and it renders: every plot and grid decodes in headless Chromium (when there is one)
    if let Some(browser) = chromium::find() {
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
    // everything finished: a re-run only rewrites the report
    let start = Instant::now();
    let again = ablate(&out).output().unwrap();
    assert!(again.status.success());
    assert!(start.elapsed() < Duration::from_secs(60), "re-run took {:?}", start.elapsed());
    std::fs::remove_dir_all(&out).unwrap();
}
