//! Running cargo itself: the test suite, lints and `lpl doctor`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use lpl_test_assets::Asset;

use crate::setup::workspace_root;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn nextest_available() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The test binaries that compare against reference values (fixtures written by Python
/// scripts, NumPy or hand-computed references): run a second time under other numerics.
const PARITY_BINARIES: &[&str] = &[
    "lpl-schedulers::diffusers_parity",
    "lpl-schedulers::learned_variance",
    "lpl-autoencoder::diffusers_parity",
    "lpl-autoencoder::taef2",
    "lpl-denoiser::dit",
    "lpl-loss::lpl",
    "lpl-metrics::frechet",
    "lpl-metrics::effnet",
    "lpl-metrics::inception",
    "lpl-metrics::prdc_spectrum",
    "lpl-trainer::optimizer_parity",
    "lpl::loss_probe",
];

/// Environment of the second parity pass: ATen's portable kernels (no AVX, no FMA), MKL's
/// SSE4.2 code path (its vector maths gives other last bits than on AVX-512 or AVX2), one
/// thread (other reduction splits). A tolerance that held only for the machine that wrote a
/// fixture fails here, on any x86-64 CI machine, instead of on the next user's machine.
const OTHER_NUMERICS: &[(&str, &str)] = &[
    ("ATEN_CPU_CAPABILITY", "default"),
    ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"),
    ("OMP_NUM_THREADS", "1"),
];

/// Threads per test process when nextest runs `test_threads` tests at once: libtorch's
/// OpenMP pool defaults to one thread per CPU, so two test processes on two CPUs would run
/// four threads; every parallel region then waits at its barrier for a thread the scheduler
/// has parked, a time slice per op. On a CI machine that made a 4-second test take 568 s.
/// The budget keeps the total at the CPU count (the one test that runs alone, the quick
/// ablation, gives its child process every CPU itself).
fn thread_budget() -> (usize, Vec<(&'static str, String)>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut env = Vec::new();
    for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            env.push((var, "1".to_string()));
        }
    }
    env.push(("LPL_TEST_CPUS", cpus.to_string()));
    (cpus, env)
}

/// How the suite treats tests that need external assets (see `lpl-test-assets`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AssetPolicy {
    /// Every asset must be present: the suite refuses to start otherwise, naming each one.
    Required,
    /// `--offline`: the tests that need assets are left out by nextest's `offline` profile
    /// and reported as skipped. Refused on CI.
    Offline,
}

/// Splits `--offline` off the arguments of `cargo xtask test`.
pub fn asset_policy(args: &[String]) -> (AssetPolicy, Vec<String>) {
    let offline = args.iter().any(|a| a == "--offline");
    let rest = args.iter().filter(|a| *a != "--offline").cloned().collect();
    (if offline { AssetPolicy::Offline } else { AssetPolicy::Required }, rest)
}

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The asset gate: with [`AssetPolicy::Required`] every missing asset is an error naming it,
/// where it was looked for and how to provide it; `--offline` is refused on CI (`ci`), where
/// nothing may be skipped.
pub fn check_assets(policy: AssetPolicy, missing: &[Asset], ci: bool) -> Result<()> {
    if policy == AssetPolicy::Offline {
        if ci {
            bail!("--offline is refused on CI: every test must run there (no skips)");
        }
        for asset in missing {
            eprintln!(
                "--offline: {} absent ({}); its tests are left out and reported as skipped",
                asset.name(),
                asset.location().display()
            );
        }
        return Ok(());
    }
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> =
        missing.iter().map(|a| format!("  - {}", a.missing_message())).collect();
    bail!(
        "{} test asset(s) could not be provided, so the tests that need them cannot run:\n{}\n\
         (`cargo xtask test --offline` runs the rest deliberately, reporting those as skipped)",
        missing.len(),
        lines.join("\n")
    )
}

/// The whole workspace test suite. With cargo-nextest the unit and integration tests run
/// under nextest and the doc tests, first, under `cargo test --doc` (nextest cannot run them);
/// then, before the whole suite, the parity tests once more under [`OTHER_NUMERICS`].
///
/// Assets first ([`check_assets`]). On CI nextest also runs `#[ignore]`d tests
/// (`--run-ignored all`), so its summary can show no skipped test there.
pub fn test(args: &[String]) -> Result<()> {
    let (policy, extra) = asset_policy(args);
    check_assets(policy, &Asset::missing(), on_ci())?;
    let profile: &[&str] =
        if policy == AssetPolicy::Offline { &["--profile", "offline"] } else { &[] };
    let ignored: &[&str] = if on_ci() { &["--run-ignored", "all"] } else { &[] };
    if nextest_available() {
        let (cpus, budget) = thread_budget();
        eprintln!(
            "{cpus} CPUs available (nproc {}): {cpus} tests at a time, {}",
            std::fs::read_to_string("/proc/cpuinfo")
                .map(|s| s.matches("processor\t").count().to_string())
                .unwrap_or_else(|_| "?".into()),
            budget.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        // Doc tests and the parity pass first, so the run closes with nextest's summary of
        // the whole suite.
        if extra.is_empty() {
            let mut doc = cargo();
            doc.args(["test", "--workspace", "--doc", "--quiet"]);
            run(doc, "cargo test --doc")?;
            // the API docs build without a warning (broken or private links)
            let mut api = cargo();
            api.args(["doc", "--workspace", "--no-deps", "--quiet"])
                .env("RUSTDOCFLAGS", "-D warnings");
            run(api, "cargo doc (warnings denied)")?;
            let filter =
                PARITY_BINARIES.iter().map(|b| format!("binary_id({b})")).collect::<Vec<_>>();
            let mut parity = cargo();
            parity
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .args(profile)
                .arg("-E")
                .arg(filter.join(" | "))
                .arg(format!("--test-threads={cpus}"))
                .envs(budget.iter().map(|(k, v)| (*k, v.as_str())))
                .envs(OTHER_NUMERICS.iter().copied());
            eprintln!(
                "parity tests under other numerics: {}",
                OTHER_NUMERICS
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            run(parity, "cargo nextest run (parity tests under other numerics)")?;
        }
        let mut cmd = cargo();
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(profile)
            .args(ignored)
            .arg(format!("--test-threads={cpus}"))
            .envs(budget.iter().map(|(k, v)| (*k, v.as_str())))
            .args(&extra);
        run(cmd, "cargo nextest run")?;
        if extra.is_empty() {
            eprintln!("fuzzing every file reader for {CI_FUZZ_SECONDS} s");
            fuzz(&["--seconds".to_string(), CI_FUZZ_SECONDS.to_string()])?;
        }
    } else {
        if policy == AssetPolicy::Offline {
            bail!(
                "--offline needs cargo-nextest (`cargo install cargo-nextest`): plain cargo test cannot report skips"
            );
        }
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--no-fail-fast"]).args(&extra);
        if on_ci() {
            cmd.args(["--", "--include-ignored"]);
        }
        run(cmd, "cargo test")?;
    }
    Ok(())
}

/// `lpl-fuzz` (dev profile, so overflow checks and debug assertions are on, and the build is
/// shared with the tests): every reader for `--seconds` in all; fails on any crash.
pub fn fuzz(extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--package", "lpl-fuzz", "--"]).args(extra);
    run(cmd, "lpl-fuzz")
}

/// Seconds of fuzzing in every `cargo xtask test` run (all targets together).
const CI_FUZZ_SECONDS: &str = "60";

/// `cargo fmt --check` and clippy with warnings denied.
pub fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(clippy, "cargo clippy")
}

/// Every benchmark (`cargo bench`, release profile): LPL overhead (forwarding `extra`),
/// the training step against PyTorch eager, sampling throughput, data throughput. `extra`
/// goes to the first (e.g. `-- --batch 4 --device cuda`); a `--device` in it goes to the
/// training-step and sampling benches too.
pub fn bench(extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "--package", "lpl-loss", "--bench", "overhead"]).args(extra);
    run(cmd, "cargo bench (lpl overhead)")?;
    let device: Vec<String> = extra
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| extra.get(i + 1))
        .map(|d| vec!["--".to_string(), "--device".to_string(), d.clone()])
        .unwrap_or_default();
    for (bench, what) in [
        ("train_step", "cargo bench (training step vs PyTorch eager)"),
        ("sampling", "cargo bench (sampling throughput)"),
        ("distributed", "cargo bench (data-parallel step and all-reduce over Gloo)"),
    ] {
        let mut cmd = cargo();
        cmd.args(["bench", "--package", "lpl-trainer", "--bench", bench]).args(&device);
        run(cmd, what)?;
    }
    let mut data = cargo();
    data.args(["bench", "--package", "lpl-data", "--bench", "throughput"]);
    run(data, "cargo bench (data throughput)")
}

/// `lpl ablate` through cargo (`extra`: `--quick`, `--config FILE`, `--device ...`).
pub fn ablate(extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--package", "lpl", "--", "ablate"]).args(extra);
    run(cmd, "lpl ablate")
}

/// `lpl doctor` through cargo, so it is built with the libtorch that setup chose.
pub fn doctor() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--package", "lpl", "--", "doctor"]);
    run(cmd, "lpl doctor")
}

/// `cargo clean -p torch-sys`: forces torch-sys to rebuild against a libtorch that replaced
/// the previous one behind the same `.libtorch` path.
pub fn clean_torch_sys(root: &Path) -> Result<()> {
    if !root.join("target").exists() {
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.args(["clean", "--quiet", "--package", "torch-sys"]);
    run(cmd, "cargo clean -p torch-sys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_asset_stops_the_suite_naming_it_and_offline_is_refused_on_ci() {
        let err = check_assets(AssetPolicy::Required, &[Asset::Taef2, Asset::Chromium], false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2 test asset(s) could not be provided"), "{err}");
        assert!(err.contains("TAEF2 weights") && err.contains("LPL_TAEF2_DIR"), "{err}");
        assert!(err.contains("Chromium") && err.contains("--offline"), "{err}");
        assert!(check_assets(AssetPolicy::Required, &[], true).is_ok());
        assert!(check_assets(AssetPolicy::Offline, &[Asset::Taef2], false).is_ok());
        let err = check_assets(AssetPolicy::Offline, &[], true).unwrap_err().to_string();
        assert!(err.contains("refused on CI"), "{err}");
    }

    #[test]
    fn offline_is_split_off_the_runner_arguments() {
        let args = ["--offline".to_string(), "-E".into(), "test(x)".into()];
        let (policy, rest) = asset_policy(&args);
        assert_eq!(policy, AssetPolicy::Offline);
        assert_eq!(rest, ["-E", "test(x)"]);
        assert_eq!(asset_policy(&rest).0, AssetPolicy::Required);
    }
}
