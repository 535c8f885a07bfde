//! The one error type of this crate.

use std::path::{Path, PathBuf};

/// What can go wrong configuring, running or reporting an ablation.
#[derive(Debug, thiserror::Error)]
pub enum AblationError {
    /// The ablation config does not parse; the message names the field and line.
    #[error("{}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field of the ablation config has an invalid value.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field, as a dotted TOML path.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Training, sampling or a run config failed.
    #[error(transparent)]
    Train(#[from] lpl_trainer::TrainError),
    /// A dataset error.
    #[error(transparent)]
    Data(#[from] lpl_data::DataError),
    /// An autoencoder error.
    #[error(transparent)]
    Autoencoder(#[from] lpl_autoencoder::AutoencoderError),
    /// A file could not be written atomically or a checkpoint read.
    #[error(transparent)]
    TensorIo(#[from] lpl_tensor_io::TensorIoError),
    /// The feature network or the statistics of the evaluation.
    #[error(transparent)]
    Metrics(#[from] lpl_metrics::StatsError),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// The latent perceptual loss failed.
    #[error(transparent)]
    Loss(#[from] lpl_loss::LplError),
    /// A schedule computation failed.
    #[error(transparent)]
    Schedule(#[from] lpl_schedulers::ScheduleError),
    /// The denoiser failed.
    #[error(transparent)]
    Denoiser(#[from] lpl_denoiser::DenoiserError),
}

/// `Result` with [`AblationError`].
pub type Result<T, E = AblationError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> AblationError {
    AblationError::InvalidConfig { field, reason: reason.into() }
}

/// Reads a text file; errors name it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| AblationError::Io { path: path.to_path_buf(), source: e })
}

/// Parses TOML `text` into `T`; errors name `path`, the key and the line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text)
        .map_err(|e| AblationError::ConfigFile { path: path.to_path_buf(), message: e.to_string() })
}
