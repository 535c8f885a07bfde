//! `cargo xtask <command>`: everything a fresh machine needs beyond Rust and Python 3.
//!
//! - `setup`: find or install libtorch 2.11.0 and make it visible to plain cargo commands;
//! - `doctor`: setup, then `lpl doctor`;
//! - `test [--offline] [ARGS...]`: setup and assets, then the whole workspace test suite
//!   (nextest when installed); a missing asset stops it, naming the asset;
//! - `fixtures`: regenerate golden fixtures with the pinned Python references;
//! - `fuzz [--seconds N] [--target NAME]`: the stable mutation fuzzer over every file reader;
//! - `lint`: `cargo fmt --check` and `cargo clippy --workspace --all-targets -D warnings`;
//! - `bench`: every benchmark (LPL overhead, training step vs PyTorch eager, sampling, data);
//! - `ablate`: the main job, `lpl ablate` on the embedded default.
//!
//! xtask does not depend on `tch`, so it builds and runs before libtorch exists.

mod assets;
mod cargo;
mod fixtures;
mod python;
mod setup;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  setup            find or install libtorch 2.11.0 (LIBTORCH, else a managed venv under
                   $LPL_HOME, default ~/.cache/lpl) and link it as .libtorch
  doctor           setup, then `lpl doctor`
  test [--offline] [ARGS..]
                   setup and test assets, then the workspace tests (cargo-nextest if installed, else
                   cargo test); fails naming any asset it cannot provide; --offline leaves out the
                   tests that need assets (reported as skipped; refused on CI); ARGS are
                   forwarded to the test runner
  fixtures         regenerate the golden fixtures with the pinned Python references
  fuzz [ARGS..]    mutation fuzzing of every file reader (pickle/zip state dicts, safetensors,
                   checkpoints, IDX, PNG, cache manifests, run and ablation configs):
                   `--seconds N` in all (default 60), `--target NAME`; report and crashing
                   inputs in target/fuzz/; fails on any crash
  lint             cargo fmt --check and cargo clippy --workspace --all-targets -D warnings
  ablate [ARGS..]  the MSE vs MSE+LPL ablation on Fashion-MNIST (configs/ablate-default.toml):
                   autoencoder, latent cache, MSE pre-training, MSE and MSE+LPL continuations
                   over seeds, FD-EffNet, report.md/.html with plots; `--quick` for a smoke
                   run, `--config F`, `--out D`, `--only eps`, `--device cuda`; resumable
  bench [ARGS..]   LPL overhead per decoder depth, training-step images/s vs PyTorch eager,
                   sampling images/s, latent-cache and PNG-decode throughput; ARGS after `--`
                   go to the LPL overhead bench (a --device there to all); JSON in
                   target/bench/";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    let result = match command.as_str() {
        "setup" => setup::run().map(|_| ()),
        "doctor" => setup::run().and_then(|_| cargo::doctor()),
        "test" => setup::run()
            .and_then(|_| assets::ensure())
            .map(|_| assets::ensure_chromium_on_ci())
            .and_then(|_| cargo::test(&rest)),
        "lint" => cargo::lint(),
        "fuzz" => setup::run().and_then(|_| cargo::fuzz(&rest)),
        "fixtures" => setup::run().and_then(|_| fixtures::run()),
        "bench" => setup::run()
            .and_then(|_| assets::ensure())
            .and_then(|_| fixtures::ensure_reference_packages().map(drop))
            .and_then(|_| cargo::bench(&rest)),
        "ablate" => setup::run().and_then(|_| assets::ensure()).and_then(|_| cargo::ablate(&rest)),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
