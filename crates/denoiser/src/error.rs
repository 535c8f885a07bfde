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
    /// A libtorch error.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for DenoiserError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e.to_string())
    }
}

/// `Result` with [`DenoiserError`].
pub type Result<T, E = DenoiserError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> DenoiserError {
    DenoiserError::InvalidConfig { field, reason: reason.into() }
}
