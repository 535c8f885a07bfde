//! `lpl ae encode` and `lpl ae decode` end to end, with an lpl checkpoint and (when its
//! weights are present) the TAEF2 folder, plus the errors users meet.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lpl::autoencoder::{AutoencoderKl, AutoencoderKlConfig, checkpoint};
use tch::{Device, Kind};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpl-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_images(dir: &Path, n: u32, size: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, (i * 80) as u8])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

fn encode(ae: &Path, images: &Path, out: &Path) -> (bool, String) {
    lpl(&[
        "ae",
        "encode",
        "--device",
        "cpu",
        "--batch",
        "2",
        "--ae",
        &s(ae),
        "--images",
        &s(images),
        "--out",
        &s(out),
    ])
}

fn decode(ae: &Path, latents: &Path, out: &Path) -> (bool, String) {
    lpl(&[
        "ae",
        "decode",
        "--device",
        "cpu",
        "--ae",
        &s(ae),
        "--latents",
        &s(latents),
        "--out",
        &s(out),
    ])
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn lpl(args: &[&str]) -> (bool, String) {
    let out = Command::new(LPL).args(args).env_remove("LD_LIBRARY_PATH").output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn encode_then_decode_with_an_lpl_checkpoint() {
    let dir = scratch("kl");
    let ckpt = dir.join("ae.safetensors");
    let config = AutoencoderKlConfig::preset("tiny").unwrap();
    let ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    checkpoint::save_kl(&ae, &ckpt, &BTreeMap::new()).unwrap();
    let (images, latents, out) =
        (dir.join("images"), dir.join("latents.safetensors"), dir.join("decoded"));
    write_images(&images, 3, 16);
    let (ok, text) = encode(&ckpt, &images, &latents);
    assert!(ok, "{text}");
    let tensors = lpl_tensor_io::read_tensors(&latents).unwrap();
    assert_eq!(tensors["latents"].size(), vec![3, 4, 8, 8]);
    let meta = lpl_tensor_io::read_metadata(&latents).unwrap();
    assert!(meta["lpl.codec"].contains("minus_one_to_one") && meta["lpl.space"] == "model");
    let (ok, text) = decode(&ckpt, &latents, &out);
    assert!(ok, "{text}");
    for i in 0..3 {
        let img = image::open(out.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
    // errors name what is wrong
    write_images(&images, 1, 8);
    std::fs::rename(images.join("img0.png"), images.join("img9.png")).unwrap();
    let (ok, text) = encode(&ckpt, &images, &latents);
    assert!(!ok && text.contains("img9.png") && text.contains("8x8"), "{text}");
    let (ok, text) = decode(&ckpt, &ckpt, &out);
    assert!(!ok && text.contains("no tensor named `latents`"), "{text}");
    let (ok, text) = decode(&dir, &latents, &out);
    assert!(!ok && text.contains("neither a diffusers VAE folder"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn encode_then_decode_with_taef2() {
    let weights = lpl_test_assets::Asset::Taef2.require();
    let dir = scratch("taef2");
    let (images, latents, out) =
        (dir.join("images"), dir.join("latents.safetensors"), dir.join("out"));
    write_images(&images, 2, 32);
    let (ok, text) = encode(&weights, &images, &latents);
    assert!(ok, "{text}");
    assert_eq!(lpl_tensor_io::read_tensors(&latents).unwrap()["latents"].size(), vec![2, 32, 4, 4]);
    let (ok, text) = decode(&weights, &latents, &out);
    assert!(ok, "{text}");
    assert!(out.join("000001.png").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
