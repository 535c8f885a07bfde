//! `lpl loss-probe` prints the loss of two latent files as JSON; on the lpl-loss fixture its
//! `diffusers` total equals the port re-implementation's batch mean.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use tch::{Kind, Tensor};

fn probe(args: &[&str]) -> serde_json::Value {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lpl")).arg("loss-probe").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn diffusers_total_matches_the_fixture() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/lpl-loss/tests/fixtures");
    let golden: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(fixtures.join("diffusers_lpl.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let dir = std::env::temp_dir().join(format!("lpl-probe-{}", std::process::id()));
    let (pred, target) = (dir.join("pred.safetensors"), dir.join("target.safetensors"));
    for (path, key) in [(&pred, "input"), (&target, "target")] {
        lpl_tensor_io::save(
            &[("latents".to_string(), golden[key].shallow_clone())],
            &BTreeMap::new(),
            path,
        )
        .unwrap();
    }
    let s = |p: &Path| p.display().to_string();
    let ae = s(&fixtures.join("vae_lpl"));
    let json = probe(&[
        "--ae",
        &ae,
        "--pred",
        &s(&pred),
        "--target",
        &s(&target),
        "--preset",
        "diffusers",
    ]);
    let total = json["total"].as_f64().unwrap();
    let expected = f64::try_from(golden["per_sample"].mean(Kind::Double)).unwrap();
    // 1e-4 rel: as in lpl-loss's parity test (means of >= 4096 terms, features ~1e-5 off): ~1e-6
    assert!(((total - expected) / expected).abs() < 1e-4, "{total} vs {expected}");
    let per_layer: Vec<f64> =
        json["per_layer"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(per_layer.len(), 5);
    // ~1e-7 abs on 3.6e-3: f64 sum of five f32 terms vs their f32 sum, a few ulps (~1e-9)
    assert!((per_layer.iter().sum::<f64>() - total).abs() < 1e-9 * total.abs().max(1.0) + 1e-7);
    assert_eq!(json["kept_fraction"].as_f64().unwrap(), 1.0);
    assert_eq!(json["masked_fraction"].as_array().unwrap().len(), 5);
    assert_eq!(json["layers"][0], "mid_block");
    // with timesteps, the port's gate t < 200 keeps two of three
    let json = probe(&[
        "--ae",
        &ae,
        "--pred",
        &s(&pred),
        "--target",
        &s(&target),
        "--preset",
        "diffusers",
        "--t",
        "10,500,20",
    ]);
    // 1e-6: 2/3 as a host f64 division rounded to f32 (same on any CPU): off by < 3e-8
    assert!((json["kept_fraction"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
    std::fs::remove_dir_all(dir).unwrap();
}
