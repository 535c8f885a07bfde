//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong when configuring, loading or running an autoencoder.
#[derive(Debug, thiserror::Error)]
pub enum AutoencoderError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config file does not parse (unknown field, wrong type, ...).
    #[error("{}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field and position.
        message: String,
    },
    /// A configuration field has an invalid value.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field's name as written in the config.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Reading, checking or writing a weights file failed (names the file and key).
    #[error(transparent)]
    Weights(#[from] lpl_tensor_io::TensorIoError),
    /// An input tensor of the wrong rank, channel count, size or range.
    #[error("bad input: {0}")]
    Input(String),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`AutoencoderError`].
pub type Result<T, E = AutoencoderError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> AutoencoderError {
    AutoencoderError::InvalidConfig { field, reason: reason.into() }
}
