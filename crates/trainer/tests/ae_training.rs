//! The autoencoder training loop on small synthetic images: it learns (PSNR rises well above
//! the untrained model's), writes a checkpoint that reloads to the same outputs with its
//! config and data-derived codec, and rejects bad configs naming the field.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, LatentNormalization, checkpoint};
use lpl_torch_ext::GlobalRng;
use lpl_trainer::ae_training::{AeTrainConfig, evaluate_psnr, train_autoencoder};
use tch::{Device, Kind, Tensor};

/// Smooth random 1-channel 12x12 u8 images (bilinear upsampling of 3x3 noise).
fn images(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let coarse = Tensor::rand([n, 1, 3, 3], (Kind::Float, Device::Cpu));
    let smooth = coarse.upsample_bilinear2d([12, 12], false, None, None);
    (smooth * 255.0).round().to_kind(Kind::Uint8)
}

fn config(dir: &Path, steps: usize) -> AeTrainConfig {
    let text = format!(
        r#"
output_dir = "{}"
[data]
dataset = "fashion_mnist"
pad_to = 16
[model.config]
in_channels = 1
out_channels = 1
latent_channels = 4
block_out_channels = [8, 16]
norm_num_groups = 4
[train]
steps = {steps}
batch_size = 16
lr = 3e-3
log_every = 10
[eval]
codec_images = 64
"#,
        dir.display()
    );
    AeTrainConfig::from_toml(&text, Path::new("test.toml")).unwrap()
}

#[test]
fn learns_and_checkpoints_round_trip() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-ae-train-{}", std::process::id()));
    let (train, test) = (images(128, 1), images(32, 2));
    let untrained = {
        let c = config(&dir, 1);
        tch::manual_seed(0);
        let ae = AutoencoderKl::new(&c.model.resolve().unwrap(), Device::Cpu, Kind::Float).unwrap();
        evaluate_psnr(&ae, &test, Some(16), 0, Device::Cpu).unwrap()
    };
    let report = train_autoencoder(&config(&dir, 150), &train, &test, Device::Cpu).unwrap();
    assert!(
        report.test_psnr > untrained + 8.0 && report.test_psnr > 20.0,
        "PSNR {:.2} dB after training vs {untrained:.2} dB untrained",
        report.test_psnr
    );
    let ae = checkpoint::load_kl(&report.checkpoint, Device::Cpu, Kind::Float).unwrap();
    let reloaded = evaluate_psnr(&ae, &test, Some(16), 0, Device::Cpu).unwrap();
    // 1e-9: bit-exact f32 weights through the file, same kernels, same process: equal PSNR
    assert!((reloaded - report.test_psnr).abs() < 1e-9, "{reloaded} vs {}", report.test_psnr);
    assert!(matches!(ae.codec().normalization, LatentNormalization::PerChannel { .. }));
    let meta = lpl_tensor_io::read_metadata(&report.checkpoint).unwrap();
    assert_eq!(meta["lpl.step"], "150");
    assert!(meta["lpl.train_config"].contains("block_out_channels"));
    // model-space latents of the training data are standardised per channel
    let x = (train.to_kind(Kind::Float) / 255.0 * 2.0 - 1.0).constant_pad_nd([2, 2, 2, 2]);
    let m = ae.codec().to_model(&tch::no_grad(|| ae.encode(&x).unwrap().mode())).unwrap();
    let std = f64::try_from(m.std(true)).unwrap();
    // 0.15: statistics from 64 codec images applied to 128; kernel ulps move std by ~1e-6
    assert!((std - 1.0).abs() < 0.15, "model-space std {std}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_configs_name_the_field() {
    let _rng = GlobalRng::lock();
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ae-fmnist.toml"),
    )
    .unwrap();
    AeTrainConfig::from_toml(&good, Path::new("ae-fmnist.toml")).unwrap();
    let err = |text: String| {
        AeTrainConfig::from_toml(&text, Path::new("x.toml")).unwrap_err().to_string()
    };
    let unknown = err(good.replace("kl_weight", "kl_wieght"));
    assert!(
        unknown.contains("kl_wieght") && unknown.contains("x.toml") && unknown.contains("line"),
        "{unknown}"
    );
    assert!(err(good.replace("steps = 1800", "steps = 0")).contains("`train.steps`"));
    assert!(err(good.replace("lr = 2e-3", "lr = -1.0")).contains("`train.lr`"));
    assert!(err(good.replace("preset = \"fmnist\"", "preset = \"fmnsit\"")).contains("fmnist"));
    assert!(err(good.replace("\"fashion_mnist\"", "\"cifar\"")).contains("`data.dataset`"));
}

/// Mid-run checkpoints do not go to the final path: a run that fails (or is killed) after
/// one leaves no `autoencoder.safetensors` that a later stage would take as finished.
#[test]
fn intermediate_checkpoints_never_take_the_final_path() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-ae-midrun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (train, test) = (images(64, 1), images(16, 2));
    let mut c = config(&dir, 6);
    c.train.checkpoint_every = 1;
    c.train.log_every = 3;
    c.train.lr = 1e12; // the loss is non-finite from step 2 on: a run of 2 by step 3
    c.train.max_nonfinite = 2;
    let err = train_autoencoder(&c, &train, &test, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    assert!(!dir.join("autoencoder.safetensors").exists(), "a failed run left the final file");
    let mid = lpl_trainer::ae_training::intermediate_checkpoint(&dir, 1);
    assert!(mid.is_file(), "{} missing", mid.display());
    // a finished run writes the final file, with its codec
    let mut c = config(&dir, 2);
    c.train.checkpoint_every = 1;
    let report = train_autoencoder(&c, &train, &test, Device::Cpu).unwrap();
    assert_eq!(report.checkpoint, dir.join("autoencoder.safetensors"));
    assert!(report.checkpoint.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The autoencoder loop skips a non-finite step as the diffusion loop does (the same AdamW:
/// parameters and moments untouched, decided on the device) and stops after
/// `max_nonfinite` in a row; a lone one is skipped and counted.
#[test]
fn non_finite_steps_are_skipped_and_a_run_of_them_stops_training() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-ae-nonfinite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (train, test) = (images(64, 1), images(16, 2));
    let mut c = config(&dir, 12);
    c.train.lr = 1e12;
    c.train.log_every = 1;
    c.train.max_nonfinite = 3;
    match train_autoencoder(&c, &train, &test, Device::Cpu) {
        Err(lpl_trainer::TrainError::NonFiniteRun { run, step }) => {
            assert_eq!(run, 3);
            assert!(step <= 5, "stopped at step {step}: the first non-finite step is 1 or 2");
        }
        other => panic!("expected a run of non-finite steps, got {other:?}"),
    }
    // a finite run skips nothing
    let c = config(&dir, 3);
    assert_eq!(train_autoencoder(&c, &train, &test, Device::Cpu).unwrap().skipped_steps, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
