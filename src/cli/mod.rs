//! The `lpl` command line and its subcommands, as a library: the binary is
//! `fn main() { lpl::cli::main() }`, and so can be a user's own binary that registers its
//! models first.

pub mod ae;
pub mod eval;
pub mod loss_probe;
pub mod model_info;
pub mod train;
pub mod verify;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use tch::Device;

/// The `lpl` command line.
#[derive(Parser)]
#[command(
    name = "lpl",
    version,
    about = "Latent diffusion training with the latent perceptual loss"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// libtorch version and path, CUDA and cuDNN availability, devices, CPU threads.
    Doctor,
    /// Autoencoders: encode, decode, train.
    #[command(subcommand)]
    Ae(ae::AeCommand),
    /// Per-layer latent perceptual loss of two latent files, printed as JSON.
    LossProbe(loss_probe::LossProbeArgs),
    /// Parameter count and a short summary of a denoiser preset.
    ModelInfo(model_info::ModelInfoArgs),
    /// Encode a dataset into a latent cache.
    Cache(train::CacheArgs),
    /// Train a diffusion model from a TOML run config.
    Train(train::TrainArgs),
    /// Sample an image grid from a run's EMA weights.
    Sample(train::SampleArgs),
    /// Sample from a run (or take a folder of images) and print FD-EffNet (or FID),
    /// precision/recall and spectrum errors against real images (a folder, a latent cache or
    /// Fashion-MNIST).
    Eval(eval::EvalArgs),
    /// MSE vs MSE + LPL: pre-train, fork, evaluate, report (resumable).
    Ablate(train::AblateArgs),
    /// Check checkpoints, cache shards and other files lpl wrote against the SHA-256 of
    /// their tensors recorded when they were written.
    Verify(verify::VerifyArgs),
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

/// The `lpl` binary: installs the logger, parses the process's arguments, runs the
/// command, prints an error chain on failure. A user's own binary that registers models
/// ([`lpl_trainer::registry::register_denoiser`],
/// [`lpl_autoencoder::register_format`]) calls this after registering, and every command
/// knows them.
pub fn main() -> ExitCode {
    reset_sigpipe();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command line `args` (the first is the program name), as the binary would.
pub fn run_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::try_parse_from(args)?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor => {
            let report = crate::doctor::Report::collect();
            println!("{report}");
            if !report.healthy() {
                for problem in &report.problems {
                    eprintln!("error: {problem}");
                }
                bail!("lpl doctor found {} problem(s)", report.problems.len());
            }
            Ok(())
        }
        Command::Ae(command) => ae::run(command),
        Command::LossProbe(args) => loss_probe::run(args),
        Command::ModelInfo(args) => model_info::run(args),
        Command::Cache(args) => train::cache(args),
        Command::Train(args) => train::train(args),
        Command::Sample(args) => train::sample(args),
        Command::Eval(args) => eval::eval(args),
        Command::Ablate(args) => train::ablate(args),
        Command::Verify(args) => verify::run(args),
    }
}

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(name: &str) -> Result<Device> {
    Ok(match name {
        // one GPU per process of a torchrun/Slurm launch: cuda:LOCAL_RANK
        "auto" if tch::Cuda::is_available() => {
            let launch = lpl_trainer::distributed::Launch::from_env()?;
            Device::Cuda(launch.map_or(0, |l| l.local_rank))
        }
        "auto" => Device::Cpu,
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device `{other}` (cpu, cuda, cuda:N, auto)"),
        },
    })
}
