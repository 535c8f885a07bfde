//! The ablation's protocol on a micro run of the default (Fashion-MNIST, own autoencoder; a
//! few dozen steps, 2 seeds): the positive control is recorded for every arm and seed (in
//! `results.csv` and the report) and its flag trips when an LPL arm is given weight 0 (it
//! trains exactly as the MSE arm: its held-out LPL is not lower); a weight given as a share
//! is calibrated at the fork (recorded, and used by the run); the pixel control arm runs;
//! the autoencoder's ceiling and the minimal detectable effect are in the report. Needs
//! Fashion-MNIST and the EfficientNet-Lite0 weights (`cargo xtask test` provides both).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

#[test]
fn protocol_control_calibration_ceiling_and_power() {
    lpl_test_assets::Asset::FashionMnist.require();
    lpl_test_assets::Asset::EffNetWeights.require();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("lpl-ablation-protocol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out");
    let config = dir.join("micro.toml");
    let text = format!(
        r#"
output_dir = "{out}"
autoencoder_config = "{root}/configs/ae-fmnist.toml"
run_config = "{root}/configs/train-fmnist.toml"
parameterizations = ["eps"]
seeds = [0, 1]
autoencoder_steps = 30
pretrain_steps = 40
continuation = {{ fraction = 0.25 }}
eval_count = 40
eval_steps = 4
eval_guidance = 1.0
train_images = 400
pixel_arm = true

[lpl]
preset = "paper"

[[variants]]
name = "lpl0"
weight = 0.0

[[variants]]
name = "share"
weight = {{ share = 0.2 }}

[[variants]]
name = "l2w0"
norm = "target_channel_l2"
weight = 0.0
"#,
        out = out.display(),
        root = root.display()
    );
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(LPL);
    cmd.current_dir(root)
        .args(["ablate", "--device", "cpu", "--config"])
        .arg(&config)
        .stdin(Stdio::null());
    if let Ok(cpus) = std::env::var("LPL_TEST_CPUS") {
        cmd.env("OMP_NUM_THREADS", &cpus).env("MKL_NUM_THREADS", &cpus);
    }
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");

    // the positive control in results.csv for every arm and seed
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (arm, lpl, weight) = (col("arm"), col("control_lpl"), col("weight"));
    let own = col("control_lpl_own");
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 5, "2 seeds x (mse, lpl0, share, l2w0, pixel): {csv}");
    for r in &rows {
        assert!(r[lpl].parse::<f64>().unwrap() > 0.0, "{r:?}");
    }
    // weight 0 trains exactly as MSE: the same held-out LPL, and the flag trips for it only
    let control = |a: &str, seed: &str| {
        rows.iter().find(|r| r[arm] == a && r[1] == seed).unwrap()[lpl].to_string()
    };
    assert_eq!(control("lpl0", "0"), control("mse", "0"));
    // a variant that changes the measure (target_channel_l2) is measured with its own LPL as
    // well: a different number from the paper preset's; the others' own value is the paper's
    for r in &rows {
        let (paper, mine) = (r[lpl].parse::<f64>().unwrap(), r[own].parse::<f64>().unwrap());
        if r[arm] == "l2w0" {
            assert!(mine > 0.0 && (mine - paper).abs() > 1e-3 * paper, "{r:?}");
        } else {
            assert_eq!(mine, paper, "{r:?}");
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("FLAGGED"), "{report}");
    assert!(report.contains("the `lpl0` arm's held-out LPL"), "{report}");
    // and the verdict of that arm says so where it is read
    let verdict = report.lines().find(|l| l.starts_with("- **eps / lpl0**")).unwrap();
    assert!(verdict.contains("positive control FAILED in seeds 0, 1"), "{verdict}");
    let verdict = report.lines().find(|l| l.starts_with("- **eps / share**")).unwrap();
    assert!(!verdict.contains("FAILED"), "{verdict}");
    assert!(!report.contains("the `share` arm's held-out LPL"), "{report}");
    // and judged by it: at weight 0 it equals the MSE arm's on that measure, so it is flagged
    assert!(report.contains("(both measured with `l2w0`)"), "{report}");
    assert!(report.contains("| l2w0 |"), "{report}");
    // the share arm's weight was calibrated at the fork and used
    let calibration: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("eps/calibration-share.json")).unwrap(),
    )
    .unwrap();
    let w = calibration["weight"].as_f64().unwrap();
    let used: f64 = rows.iter().find(|r| r[arm] == "share").unwrap()[weight].parse().unwrap();
    assert!((used - w).abs() <= 1e-6 * w, "calibrated {w}, used {used}");
    // written into the run's config (the one its checkpoints carry)
    let checkpoint =
        lpl::trainer::run_checkpoint::list_checkpoints(&out.join("eps/seed0/share")).pop().unwrap();
    let state = lpl::trainer::run_checkpoint::read_state(&checkpoint).unwrap();
    let run_config =
        lpl::trainer::run_config::RunConfig::from_toml(&state.config_toml, &checkpoint).unwrap();
    assert!((run_config.loss.lpl.unwrap().weight - w).abs() <= 1e-12 * w);
    assert!(report.contains("Weight calibration at the fork"), "{report}");
    // continuation = 0.25 of 40 pre-training steps
    assert!(report.contains("for 10 steps"), "{report}");
    // the protocol, the ceiling and the power statement
    assert!(report.contains("Protocol (pre-registered)"), "{report}");
    assert!(report.contains("The autoencoder's ceiling"), "{report}");
    assert!(report.contains("this run could have seen a change of FD-EffNet of"), "{report}");
    assert!(report.contains("| pixel |") || report.contains("/ pixel**"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}
