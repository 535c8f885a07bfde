//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong configuring or running a training loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config file does not parse; the message names the field and line.
    #[error("{}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A configuration field has an invalid value.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field, as a dotted TOML path.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Too many training steps in a row had a non-finite loss (each was skipped).
    #[error(
        "{run} training steps in a row had a non-finite loss or gradient (each was skipped; stopped at step {step}): \
         lower optim.lr, enable optim.grad_clip, or raise train.max_nonfinite"
    )]
    NonFiniteRun {
        /// Consecutive non-finite steps.
        run: usize,
        /// The step at which the run was noticed (a log or checkpoint step).
        step: usize,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An autoencoder error.
    #[error(transparent)]
    Autoencoder(#[from] lpl_autoencoder::AutoencoderError),
    /// A data error.
    #[error(transparent)]
    Data(#[from] lpl_data::DataError),
    /// A file could not be written.
    #[error(transparent)]
    TensorIo(#[from] lpl_tensor_io::TensorIoError),
    /// A schedule or sampler error.
    #[error(transparent)]
    Schedule(#[from] lpl_schedulers::ScheduleError),
    /// A latent perceptual loss error.
    #[error(transparent)]
    Lpl(#[from] lpl_loss::LplError),
    /// A denoiser error.
    #[error(transparent)]
    Denoiser(#[from] lpl_denoiser::DenoiserError),
    /// A registered denoiser's builder failed.
    #[error("building the registered denoiser `{kind}`")]
    Model {
        /// The registered kind.
        kind: String,
        /// The builder's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A feature network or statistics error (evaluation).
    #[error(transparent)]
    Metrics(#[from] lpl_metrics::StatsError),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A rank of a multi-process run failed or lost its peers; the message names the ranks.
    #[error("distributed training: {message}")]
    Distributed {
        /// What happened, with the ranks involved.
        message: String,
    },
    /// An error of the libtorch extension shim (autocast, fused AdamW).
    #[error(transparent)]
    TorchExt(#[from] lpl_torch_ext::TorchExtError),
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> TrainError {
    TrainError::InvalidConfig { field, reason: reason.into() }
}

/// Parses TOML `text` into `T`; errors name `path`, the key and the line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &std::path::Path,
) -> Result<T> {
    toml::from_str(text)
        .map_err(|e| TrainError::ConfigFile { path: path.to_path_buf(), message: e.to_string() })
}

/// Reads a text file; errors name it, as I/O errors.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| TrainError::Io { path: path.to_path_buf(), source: e })
}
