//! `lpl sample --run <published model> --ae <autoencoder>`: the learned-sigma DiT of the
//! denoiser fixtures, as a diffusers pipeline folder and in the original DiT layout, samples
//! with DDPM's learned variance into an ADM-layout `.npz` and a grid; both layouts give the
//! same samples (the same weights); a published model without `--ae`, or a run with it, is a
//! clear error.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lpl::autoencoder::{AutoencoderKl, AutoencoderKlConfig, checkpoint};
use tch::{Device, Kind};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/denoiser/tests/fixtures").join(name)
}

fn sample(run: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(LPL)
        .args(["sample", "--device", "cpu", "--count", "6", "--sampler", "ddpm", "--steps", "3"])
        .arg("--run")
        .arg(run)
        .args(extra)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn published_dit_samples_with_its_learned_variance() {
    let dir = std::env::temp_dir().join(format!("lpl-pretrained-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // an SD-like autoencoder with 4-channel latents at 8x (random weights: the decode only
    // has to run), scaling factor 0.18215 as DiT's sd-vae-ft-ema
    tch::manual_seed(0);
    let config = AutoencoderKlConfig {
        block_out_channels: vec![8, 8, 8, 8],
        norm_num_groups: 4,
        scaling_factor: 0.18215,
        ..AutoencoderKlConfig::default()
    };
    let ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    let ae_path = dir.join("vae.safetensors");
    checkpoint::save_kl(&ae, &ae_path, &BTreeMap::new()).unwrap();
    let ae_arg = ae_path.to_str().unwrap();

    let hub = fixture("hub_dit");
    let (npz_hub, grid) = (dir.join("hub.npz"), dir.join("hub.png"));
    let (ok, text) = sample(
        &hub,
        &["--ae", ae_arg, "--npz", npz_hub.to_str().unwrap(), "--out", grid.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let arrays = lpl::tensor_io::npz::read_npz(&npz_hub).unwrap();
    // the fixture: 8x8 latents, so 64x64 RGB images; labels cycling over its 10 classes
    assert_eq!(arrays["arr_0"].size(), [6, 64, 64, 3]);
    assert_eq!(arrays["arr_0"].kind(), Kind::Uint8);
    assert_eq!(Vec::<i64>::try_from(&arrays["arr_1"]).unwrap(), [0, 1, 2, 3, 4, 5]);
    assert!(image::open(&grid).is_ok());

    // the same weights in the original DiT layout: the same samples, bit for bit
    let npz_pt = dir.join("pt.npz");
    let pt = fixture("dit_original.pt");
    let (ok, text) =
        sample(&pt, &["--ae", ae_arg, "--heads", "2", "--npz", npz_pt.to_str().unwrap()]);
    assert!(ok, "{text}");
    let again = lpl::tensor_io::npz::read_npz(&npz_pt).unwrap();
    assert!(again["arr_0"].equal(&arrays["arr_0"]), "hub folder and .pt differ");

    // what is missing or misplaced is named
    let (ok, text) = sample(&hub, &["--npz", npz_pt.to_str().unwrap()]);
    assert!(!ok && text.contains("published model") && text.contains("--ae"), "{text}");
    let (ok, text) = sample(&pt, &["--ae", ae_arg, "--npz", npz_pt.to_str().unwrap()]);
    assert!(!ok && text.contains("attention heads"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
