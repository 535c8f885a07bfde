//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong configuring, loading or running a denoiser.
#[derive(Debug, thiserror::Error)]
pub enum DenoiserError {
    /// A config file could not be read or does not parse (unknown field, wrong type).
    #[error("{}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A configuration field has an invalid value.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Reading or checking a weights file failed (names the file and key).
    #[error(transparent)]
    Weights(#[from] lpl_tensor_io::TensorIoError),
    /// Inputs of the wrong shape or type.
    #[error("bad input: {0}")]
    Input(String),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`DenoiserError`].
pub type Result<T, E = DenoiserError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> DenoiserError {
    DenoiserError::InvalidConfig { field, reason: reason.into() }
}
