//! Parity with diffusers 0.42.0's AutoencoderKL (random init, `save_pretrained` folders and
//! outputs written by `fixtures/make_fixtures.py`). Tolerances for any x86-64 CPU (oneDNN,
//! MKL or Sleef kernels reorder sums and move exp/sqrt by an ulp; observed here ~1e-6):
//! - f32 1e-4 abs: |x| <= 10, ~25 normed layers each ~sqrt(288)*eps = 2e-6 rel in any order: <3e-5
//! - bf16 0.1 abs: 2^-8 rounding of weights and ~40 activations (|x| < 3), CPU-independent: ~0.05
//! - codec 1e-6: two f32 basic ops on 0.32 (ulp 3e-8), correctly rounded on any CPU.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lpl_autoencoder::{Autoencoder, AutoencoderError, AutoencoderKl, AutoencoderKlConfig};
use lpl_tensor_io::TensorIoError;
use tch::{Device, Kind, Tensor};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures_dir().join("diffusers_vae.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max()).unwrap()
}

fn check(name: &str, dir: &str) {
    let g = golden();
    let vae =
        AutoencoderKl::from_diffusers_dir(&fixtures_dir().join(dir), Device::Cpu, Kind::Float)
            .unwrap();
    let dist = vae.encode(&g[&format!("{name}/images")]).unwrap();
    let mut errors = vec![
        ("mean", max_abs(&dist.mean, &g[&format!("{name}/mean")])),
        ("logvar", max_abs(dist.logvar.as_ref().unwrap(), &g[&format!("{name}/logvar")])),
    ];
    let z = &g[&format!("{name}/mean")];
    errors.push(("decoded", max_abs(&vae.decode(z).unwrap(), &g[&format!("{name}/decoded")])));
    let depth = vae.feature_layers().len() - 1;
    let features = vae.decode_features(z, depth, true).unwrap();
    assert_eq!(features.len(), depth + 1);
    for (i, f) in features.iter().enumerate() {
        let expected = &g[&format!("{name}/feature{i}")];
        errors.push(("feature", max_abs(f, expected)));
        assert_eq!(f.size()[1], vae.feature_layers()[i].channels);
    }
    // a shallower request returns the same prefix
    let shallow = vae.decode_features(z, 1, true).unwrap();
    assert_eq!(shallow.len(), 2);
    // exact: the same kernels on the same input in one process
    assert!(max_abs(&shallow[1], &features[1]) == 0.0);
    println!("{name}: {errors:?}");
    for (what, e) in &errors {
        assert!(*e <= 1e-4, "{name} {what}: max abs error {e:e} (all: {errors:?})");
    }
}

#[test]
fn sd_like_vae_matches_diffusers() {
    check("sd_small", "vae_sd_small");
}

#[test]
fn flux_like_vae_from_f16_file_matches_diffusers() {
    check("flux_small", "vae_flux_small");
    let vae = AutoencoderKl::from_diffusers_dir(
        &fixtures_dir().join("vae_flux_small"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert!(
        vae.var_store().variables().values().all(|v| v.kind() == Kind::Float),
        "dtype follows the caller"
    );
    assert!(!vae.has_post_quant_conv());
    let codec = vae.codec();
    let z = Tensor::from_slice(&[1.0f32]).view([1, 1, 1, 1]);
    let m = f64::try_from(codec.to_model(&z).unwrap()).unwrap();
    assert!((m - (1.0 - 0.1159) * 0.3611).abs() < 1e-6, "shift then scale: {m}");
}

#[test]
fn caller_chooses_the_dtype() {
    let vae = AutoencoderKl::from_diffusers_dir(
        &fixtures_dir().join("vae_sd_small"),
        Device::Cpu,
        Kind::BFloat16,
    )
    .unwrap();
    assert!(vae.var_store().variables().values().all(|v| v.kind() == Kind::BFloat16));
    let g = golden();
    let decoded = vae.decode(&g["sd_small/mean"]).unwrap();
    assert_eq!(decoded.kind(), Kind::BFloat16);
    // bf16 has 8 bits of mantissa: close to the f32 reference, not equal
    assert!(max_abs(&decoded, &g["sd_small/decoded"]) < 0.1);
}

fn scratch_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpl-ae-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures_dir().join("vae_sd_small/config.json"), dir.join("config.json"))
        .unwrap();
    dir
}

fn write_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let src = fixtures_dir().join("vae_sd_small/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(src).unwrap();
    edit(&mut tensors);
    let refs: Vec<(&str, Tensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v.shallow_clone())).collect();
    Tensor::write_safetensors(&refs, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let dir = scratch_copy("shape");
    let key = "decoder.conv_in.weight";
    write_weights(&dir, |t| {
        let entry = t.iter_mut().find(|(k, _)| k == key).unwrap();
        entry.1 = Tensor::zeros([32, 4, 1, 1], (Kind::Float, Device::Cpu));
    });
    let err = AutoencoderKl::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        matches!(&err, AutoencoderError::Weights(TensorIoError::ShapeMismatch { key: k, .. }) if k == key)
    );
    let msg = err.to_string();
    assert!(
        msg.contains(key) && msg.contains("[32, 4, 1, 1]") && msg.contains("[32, 4, 3, 3]"),
        "{msg}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let dir = scratch_copy("missing");
    write_weights(&dir, |t| t.retain(|(k, _)| k != "encoder.mid_block.attentions.0.to_q.bias"));
    let msg =
        AutoencoderKl::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(
        msg.contains("missing tensor `encoder.mid_block.attentions.0.to_q.bias`")
            && msg.contains("[32]"),
        "{msg}"
    );
    write_weights(&dir, |t| {
        t.push(("encoder.extra.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))))
    });
    let msg =
        AutoencoderKl::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("unexpected tensor `encoder.extra.weight`"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_config_field_is_named() {
    let dir = scratch_copy("config");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replacen("\"act_fn\"", "\"activation\": \"silu\",\n  \"act_fn\"", 1),
    )
    .unwrap();
    let msg =
        AutoencoderKl::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("unknown field `activation`") && msg.contains("config.json"), "{msg}");
    let bad = AutoencoderKlConfig { norm_num_groups: 5, ..AutoencoderKlConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("`block_out_channels`"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let vae =
        AutoencoderKl::new(&AutoencoderKlConfig::preset("tiny").unwrap(), Device::Cpu, Kind::Float)
            .unwrap();
    let odd = Tensor::zeros([1, 3, 15, 16], (Kind::Float, Device::Cpu));
    assert!(matches!(vae.encode(&odd), Err(AutoencoderError::Input(_))));
    let wrong_channels = Tensor::zeros([1, 5, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(vae.decode(&wrong_channels), Err(AutoencoderError::Input(_))));
    let z = Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(vae.decode_features(&z, 3, true), Err(AutoencoderError::Input(_))));
}
