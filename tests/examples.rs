//! The examples run and do what they say: `examples/custom_denoiser.rs` registers a denoiser
//! defined outside lpl's crates and uses it through `lpl train`, `lpl sample` and `lpl eval`;
//! `examples/custom_autoencoder.rs` registers an autoencoder format and uses it where a path
//! is taken (cache, LPL training, sampling).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

#[path = "../examples/custom_denoiser.rs"]
mod custom_denoiser;

#[path = "../examples/custom_autoencoder.rs"]
mod custom_autoencoder;

use lpl::trainer::evaluation::TrainedRun;
use lpl::trainer::run_checkpoint;
use tch::Device;

fn png_size(path: &std::path::Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn custom_denoiser_trains_samples_and_evaluates_through_the_cli() {
    let _rng = lpl_torch_ext::GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = custom_denoiser::run(&dir, 6).unwrap_or_else(|e| panic!("{e}"));
    // trained with LPL, one metrics line per step
    let metrics = std::fs::read_to_string(out.run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"lpl\""), "LPL was logged: {metrics}");
    assert_eq!(metrics.lines().count(), 6);
    // reopened from the checkpoint alone: the registered builder rebuilds it, and the EMA
    // weights of the checkpoint are what it holds
    let trained = TrainedRun::open(&out.run, Device::Cpu).unwrap();
    assert_eq!(trained.config.as_ref().unwrap().model.kind(), "conv");
    let (_, tensors) = run_checkpoint::load(&trained.checkpoint).unwrap();
    for (name, w) in trained.model.var_store().variables() {
        assert!(w.equal(&tensors[&format!("ema.{name}")]), "{name} is not the EMA weight");
    }
    // a grid of 8 8x8 images (square: unconditional), 2-pixel padding
    let (w, h) = png_size(&out.grid);
    assert_eq!((w, h), (3 * 8 + 4 * 2, 3 * 8 + 4 * 2));
    // FD-EffNet computed, and lpl eval wrote its spectrum plot (both need the weights,
    // which `cargo xtask test` provides)
    let fd = out.fd.expect("EfficientNet-Lite0 weights: run `cargo xtask test`");
    assert!(fd.is_finite() && fd > 0.0, "{fd}");
    assert!(out.eval_plot.is_file());
    std::fs::remove_dir_all(dir).unwrap_or_default();
}

#[test]
fn custom_autoencoder_works_where_a_path_works() {
    let _rng = lpl_torch_ext::GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-example-ae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = custom_autoencoder::run(&dir, 4).unwrap_or_else(|e| panic!("{e}"));
    // its fingerprint is its weights': another seed gives another one, and the cache
    // refuses to be decoded by it
    assert_ne!(out.fingerprint, out.other_fingerprint);
    assert!(
        out.other_refused.contains("fingerprint") || out.other_refused.contains("autoencoder"),
        "{}",
        out.other_refused
    );
    let metrics = std::fs::read_to_string(out.run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"lpl\""), "LPL through its decoder: {metrics}");
    // lpl sample decoded through it: 4 classes per row, 8 images of 16x16
    let (w, h) = png_size(&out.grid);
    assert_eq!((w, h), (4 * 16 + 5 * 2, 2 * 16 + 3 * 2));
    std::fs::remove_dir_all(dir).unwrap_or_default();
}
