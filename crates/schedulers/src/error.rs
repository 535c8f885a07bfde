//! The one error type of this crate.

use crate::Parameterization;

/// What can go wrong when configuring or using a schedule or sampler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    /// A configuration field has an invalid value; `field` is its name as written in TOML.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A parameterisation that has no meaning on this kind of schedule (e.g. `flow` velocity
    /// on a discrete VP schedule, or `v` on rectified flow where alpha^2 + sigma^2 != 1).
    #[error("parameterization `{parameterization}` is not defined on a {schedule} schedule")]
    Unsupported {
        /// The parameterisation asked for.
        parameterization: Parameterization,
        /// `"discrete"` or `"flow"`.
        schedule: &'static str,
    },
    /// A sampler that needs the other kind of schedule (e.g. DDIM on rectified flow).
    #[error("sampler `{sampler}` needs a {needs} schedule")]
    SamplerMismatch {
        /// The sampler's config name.
        sampler: &'static str,
        /// The schedule kind it needs.
        needs: &'static str,
    },
    /// An unknown preset name; lists the known ones.
    #[error("unknown preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The model a sampler called failed; the source is its own error.
    #[error("the model failed while sampling")]
    Model(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(std::sync::Arc<tch::TchError>),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`ScheduleError`].
pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::InvalidConfig { field, reason: reason.into() }
}

impl From<tch::TchError> for ScheduleError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(std::sync::Arc::new(e))
    }
}
