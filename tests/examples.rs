//! The examples run: `examples/custom_denoiser.rs` trains a denoiser defined outside lpl's
//! crates through the trainer with LPL on.

#[path = "../examples/custom_denoiser.rs"]
mod custom_denoiser;

#[test]
fn custom_denoiser_trains_with_lpl() {
    let dir = std::env::temp_dir().join(format!("lpl-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = custom_denoiser::run(&dir, 6).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.step, 6);
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap_or_default();
    assert!(metrics.contains("\"lpl\""), "LPL was logged: {metrics}");
    assert_eq!(metrics.lines().count(), 6);
    std::fs::remove_dir_all(dir).unwrap_or_default();
}
