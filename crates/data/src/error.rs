//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong reading or preparing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's contents are malformed (bad magic, truncated, inconsistent sizes).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A dataset is not where it was looked for; says what to install or download.
    #[error("{0}")]
    NotFound(String),
    /// An invalid request (e.g. a size that cannot hold the images).
    #[error("{0}")]
    Invalid(String),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
