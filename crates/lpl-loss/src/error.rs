//! The one error type of this crate.

/// What can go wrong configuring or computing the latent perceptual loss.
#[derive(Debug, thiserror::Error)]
pub enum LplError {
    /// A configuration field has an invalid value or combination.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field, as written in the config.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The autoencoder has parameters that require gradients.
    #[error(
        "the autoencoder has {0} trainable parameters: freeze it (Autoencoder::set_requires_grad(false)) before building the loss"
    )]
    TrainableDecoder(usize),
    /// Inputs of the wrong shape.
    #[error("bad input: {0}")]
    Input(String),
    /// An autoencoder error.
    #[error(transparent)]
    Autoencoder(#[from] lpl_autoencoder::AutoencoderError),
    /// A schedule error.
    #[error(transparent)]
    Schedule(#[from] lpl_schedulers::ScheduleError),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`LplError`].
pub type Result<T, E = LplError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> LplError {
    LplError::InvalidConfig { field, reason: reason.into() }
}
