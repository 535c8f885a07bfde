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
    /// A weights file lacks a tensor the model needs.
    #[error("{}: missing tensor `{key}` (expected shape {expected:?})", file.display())]
    MissingTensor {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
        /// The shape the model needs.
        expected: Vec<i64>,
    },
    /// A tensor in a weights file has the wrong shape.
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A weights file holds a tensor the model does not have.
    #[error("{}: unexpected tensor `{key}` (not part of this model)", file.display())]
    UnexpectedTensor {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
    },
    /// An input tensor of the wrong rank, channel count, size or range.
    #[error("bad input: {0}")]
    Input(String),
    /// A libtorch error.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for AutoencoderError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e.to_string())
    }
}

/// `Result` with [`AutoencoderError`].
pub type Result<T, E = AutoencoderError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> AutoencoderError {
    AutoencoderError::InvalidConfig { field, reason: reason.into() }
}
