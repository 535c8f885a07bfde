//! Running cargo itself: the test suite, lints and `lpl doctor`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

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

/// The whole workspace test suite. With cargo-nextest the unit and integration tests run
/// under nextest and the doc tests, first, under `cargo test --doc` (nextest cannot run them);
/// then, before the whole suite, the parity tests once more under [`OTHER_NUMERICS`].
pub fn test(extra: &[String]) -> Result<()> {
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
                .args(["nextest", "run", "--workspace", "--no-fail-fast", "-E"])
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
            .arg(format!("--test-threads={cpus}"))
            .envs(budget.iter().map(|(k, v)| (*k, v.as_str())))
            .args(extra);
        run(cmd, "cargo nextest run")?;
    } else {
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--no-fail-fast"]).args(extra);
        run(cmd, "cargo test")?;
    }
    Ok(())
}

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
