//! `lpl eval --real DIR --fake DIR`: identical image sets are at FD ~0 (< 1e-6) with precision
//! and recall 1; a blurred copy is farther and has the larger high-band spectrum error; the
//! spectrum plot is written; ADM-layout `.npz` images and reference statistics (`mu`,
//! `sigma`) give the FD of the images themselves; an unknown feature network is a clear error. Fails, naming the asset,
//! without the EfficientNet-Lite0 weights (`cargo xtask test` converts them).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use lpl::data::folder::write_pngs;
use tch::{Device, Kind, Tensor};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

fn eval(real: &Path, fake: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(LPL)
        .args(["eval", "--device", "cpu", "--count", "40", "--real"])
        .arg(real)
        .arg("--fake")
        .arg(fake)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap()
}

#[test]
fn identical_sets_blur_and_errors() {
    lpl_test_assets::Asset::EffNetWeights.require();
    let dir = std::env::temp_dir().join(format!("lpl-eval-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tch::manual_seed(5);
    let coarse = Tensor::rand([40, 3, 4, 4], (Kind::Float, Device::Cpu));
    let images = (coarse.upsample_bilinear2d([32, 32], false, None, None) * 0.8
        + Tensor::rand([40, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.2)
        .clamp(0.0, 1.0);
    let k = Tensor::from_slice(&[0.25f32, 0.5, 0.25]);
    let blurred = images
        .conv2d(
            &k.view([1, 1, 1, 3]).repeat([3, 1, 1, 1]),
            None::<Tensor>,
            [1, 1],
            [0, 1],
            [1, 1],
            3,
        )
        .conv2d(
            &k.view([1, 1, 3, 1]).repeat([3, 1, 1, 1]),
            None::<Tensor>,
            [1, 1],
            [1, 0],
            [1, 1],
            3,
        );
    let (a, b): (PathBuf, PathBuf) = (dir.join("a"), dir.join("blurred"));
    write_pngs(&images, &a, 0).unwrap();
    write_pngs(&blurred, &b, 0).unwrap();
    let plot = dir.join("spectrum.png");
    let (ok, stdout, stderr) = eval(&a, &a, &["--plot", plot.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let same = json(&stdout)["metrics"].clone();
    assert_eq!(same["metric"], "FD-EffNet");
    // 1e-6: bit-identical features; f64 eigh noise (any LAPACK) ~18x under the d*eps*max cut
    assert!(same["fd"].as_f64().unwrap().abs() < 1e-6, "{same}");
    assert_eq!(same["precision"].as_f64(), Some(1.0));
    assert_eq!(same["recall"].as_f64(), Some(1.0));
    assert!(image::open(&plot).is_ok(), "the spectrum plot is a PNG");
    let (ok, stdout, stderr) = eval(&a, &b, &[]);
    assert!(ok, "{stderr}");
    let blur = json(&stdout)["metrics"].clone();
    assert!(blur["fd"].as_f64().unwrap() > 1.0, "{blur}");
    assert!(blur["spectrum_high"].as_f64().unwrap() > blur["spectrum_low"].as_f64().unwrap());
    assert!(
        blur["spectrum_high"].as_f64().unwrap()
            > 10.0 * same["spectrum_high"].as_f64().unwrap().max(1e-3)
    );
    // the same images as ADM-layout .npz files (what `lpl sample --npz`, ADM's and DiT's
    // samplers write) give the same metrics, bit for bit: uint8 pixels either way
    let pixels = |dir: &Path| {
        lpl::data::folder::read_folder(dir, &lpl::data::ReadOptions::new(3)).unwrap().images
    };
    let (npz_a, npz_b) = (dir.join("a.npz"), dir.join("b.npz"));
    let unit = |t: Tensor| t.to_kind(Kind::Float) / 255.0;
    lpl::trainer::sampling::write_npz(&unit(pixels(&a)), None, &npz_a).unwrap();
    lpl::trainer::sampling::write_npz(&unit(pixels(&b)), None, &npz_b).unwrap();
    let (ok, stdout, stderr) = eval(&npz_a, &npz_b, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(json(&stdout)["metrics"]["fd"], blur["fd"], "FD from .npz files");
    // reference statistics: written by --save-real-stats in ADM's layout (mu, sigma), read
    // back as --real they give the FD of the images themselves. 1e-9 relative: the same
    // f64 statistics (npz stores f64 exactly), the same FD arithmetic
    let stats = dir.join("ref_stats.npz");
    let (ok, _, stderr) = eval(&npz_a, &npz_b, &["--save-real-stats", stats.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let arrays = lpl::tensor_io::npz::read_npz(&stats).unwrap();
    assert_eq!(arrays["mu"].size(), [1280]);
    assert_eq!(arrays["sigma"].size(), [1280, 1280]);
    assert_eq!(arrays["mu"].kind(), Kind::Double);
    let (ok, stdout, stderr) = eval(&stats, &npz_b, &[]);
    assert!(ok, "{stderr}");
    let from_stats = json(&stdout)["metrics"].clone();
    let (x, y) = (from_stats["fd"].as_f64().unwrap(), blur["fd"].as_f64().unwrap());
    assert!((x - y).abs() <= 1e-9 * y, "FD from stored statistics {x} vs images {y}");
    // statistics alone have no neighbours and no spectrum: shown as "-", null in the JSON
    assert!(from_stats["precision"].is_null(), "{from_stats}");
    assert!(stdout.contains("| - | - |"), "{stdout}");
    // statistics of another network are refused, naming the file and the dimensions
    let other = dir.join("inception_like.npz");
    let mu = Tensor::zeros([2048], (Kind::Double, Device::Cpu));
    let sigma = Tensor::eye(2048, (Kind::Double, Device::Cpu));
    lpl::tensor_io::npz::write_npz(&other, &[("mu", &mu), ("sigma", &sigma)]).unwrap();
    let (ok, _, stderr) = eval(&other, &npz_b, &[]);
    assert!(
        !ok && stderr.contains("inception_like.npz") && stderr.contains("2048-dimensional"),
        "{stderr}"
    );
    let (ok, _, stderr) = eval(&dir.join("missing.npz"), &npz_b, &[]);
    assert!(!ok && stderr.contains("missing.npz"), "{stderr}");
    let (ok, _, stderr) = eval(&a, &b, &["--features", "clip"]);
    assert!(!ok && stderr.contains("unknown `clip`"), "{stderr}");
    let (ok, _, stderr) = eval(&a, &b, &["--features", "inception"]);
    assert!(!ok && stderr.contains("--inception-weights"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
