//! The `lpl` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lpl",
    version,
    about = "Latent diffusion training with the latent perceptual loss"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// libtorch version and path, CUDA and cuDNN availability, devices, CPU threads.
    Doctor,
    /// Autoencoders: encode, decode, train.
    #[command(subcommand)]
    Ae(cli::ae::AeCommand),
    /// Per-layer latent perceptual loss of two latent files, printed as JSON.
    LossProbe(cli::loss_probe::LossProbeArgs),
    /// Parameter count and a short summary of a denoiser preset.
    ModelInfo(cli::model_info::ModelInfoArgs),
    /// Encode a dataset into a latent cache.
    Cache(cli::train::CacheArgs),
    /// Train a diffusion model from a TOML run config.
    Train(cli::train::TrainArgs),
    /// Sample an image grid from a run's EMA weights.
    Sample(cli::train::SampleArgs),
    /// Sample from a run (or take a folder of images) and print FD-EffNet (or FID),
    /// precision/recall and spectrum errors against real images (a folder, a latent cache or
    /// Fashion-MNIST).
    Eval(cli::eval::EvalArgs),
    /// MSE vs MSE + LPL: pre-train, fork, evaluate, report (resumable).
    Ablate(cli::train::AblateArgs),
}

/// Restores the default SIGPIPE action, so that `lpl ... | head` ends quietly instead of
/// panicking on a closed stdout (Rust ignores SIGPIPE by default).
#[cfg(unix)]
#[allow(unsafe_code)]
fn reset_sigpipe() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: installing the default disposition for SIGPIPE before any thread starts.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn reset_sigpipe() {}

fn main() -> ExitCode {
    reset_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => {
            let report = lpl::doctor::Report::collect();
            println!("{report}");
            if report.healthy() {
                Ok(())
            } else {
                for problem in &report.problems {
                    eprintln!("error: {problem}");
                }
                return ExitCode::FAILURE;
            }
        }
        Command::Ae(command) => cli::ae::run(command),
        Command::LossProbe(args) => cli::loss_probe::run(args),
        Command::ModelInfo(args) => cli::model_info::run(args),
        Command::Cache(args) => cli::train::cache(args),
        Command::Train(args) => cli::train::train(args),
        Command::Sample(args) => cli::train::sample(args),
        Command::Eval(args) => cli::eval::eval(args),
        Command::Ablate(args) => cli::train::ablate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
