//! What the denoiser predicts, the training target for it, and the exact conversions back to
//! the clean sample and the noise.
//!
//! With `z_t = alpha z_0 + sigma eps` (per-sample alpha, sigma: `(B,)`):
//! | parameterisation | target | x0 from prediction p | eps from p |
//! |---|---|---|---|
//! | `eps`  | eps | (z - sigma p) / alpha | p |
//! | `v`    | alpha eps - sigma z_0 | alpha z - sigma p | alpha p + sigma z |
//! | `x0`   | z_0 | p | (z - alpha p) / sigma |
//! | `flow` | eps - z_0 | z - t p | z + (1 - t) p |
//!
//! `v` needs `alpha^2 + sigma^2 = 1` (VP schedules only); `flow` is the velocity of rectified
//! flow (flow schedules only). All conversions compute in f32 whatever the model dtype (f64
//! inputs stay f64).

use std::fmt;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, ScheduleError};
use crate::schedule::{NoiseSchedule, per_sample};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    /// The noise (DDPM).
    Eps,
    /// The velocity `alpha eps - sigma z_0` (Salimans & Ho).
    V,
    /// The clean sample.
    X0,
    /// The rectified-flow velocity `eps - z_0`.
    Flow,
}

impl fmt::Display for Parameterization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eps => "eps",
            Self::V => "v",
            Self::X0 => "x0",
            Self::Flow => "flow",
        })
    }
}

/// The coefficients of one noise level, `(B,)` f32 each: enough to convert any prediction.
#[derive(Debug)]
pub struct NoiseLevel {
    /// `(B,)` f32: the coefficient of z_0.
    pub alpha: Tensor,
    /// `(B,)` f32: the coefficient of eps.
    pub sigma: Tensor,
    /// Whether `alpha^2 + sigma^2 = 1` (VP) rather than `alpha + sigma = 1` (flow).
    pub variance_preserving: bool,
}

/// f64 stays f64; everything else (f16, bf16, f32) computes in f32.
fn compute_kind(x: &Tensor) -> Kind {
    if x.kind() == Kind::Double { Kind::Double } else { Kind::Float }
}

impl NoiseLevel {
    /// The noise level of `schedule` at t `(B,)`.
    pub fn at(schedule: &NoiseSchedule, t: &Tensor) -> Result<Self> {
        let (alpha, sigma) = schedule.alpha_sigma(t)?;
        Ok(Self {
            alpha,
            sigma,
            variance_preserving: matches!(schedule, NoiseSchedule::Discrete(_)),
        })
    }
}

impl Parameterization {
    /// Whether this parameterisation is defined on `schedule`; a typed error if not.
    pub fn check(self, schedule: &NoiseSchedule) -> Result<()> {
        self.check_kind(matches!(schedule, NoiseSchedule::Discrete(_)))
    }

    fn check_kind(self, variance_preserving: bool) -> Result<()> {
        let ok = match self {
            Self::Eps | Self::X0 => true,
            Self::V => variance_preserving,
            Self::Flow => !variance_preserving,
        };
        if ok {
            Ok(())
        } else {
            Err(ScheduleError::Unsupported {
                parameterization: self,
                schedule: if variance_preserving { "discrete" } else { "flow" },
            })
        }
    }

    /// The training target for `(z0, eps)` at t: `(B, ...)` f32 (f64 for f64 inputs).
    pub fn target(
        self,
        schedule: &NoiseSchedule,
        z0: &Tensor,
        eps: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        let level = NoiseLevel::at(schedule, t)?;
        self.target_at(&level, z0, eps)
    }

    /// [`Self::target`] at a given noise level.
    pub fn target_at(self, level: &NoiseLevel, z0: &Tensor, eps: &Tensor) -> Result<Tensor> {
        self.check_kind(level.variance_preserving)?;
        let kind = compute_kind(z0);
        let z0 = z0.f_to_kind(kind)?;
        let eps = eps.f_to_kind(kind)?;
        Ok(match self {
            Self::Eps => eps,
            Self::X0 => z0,
            Self::V => per_sample(&level.alpha, &z0)? * &eps - per_sample(&level.sigma, &z0)? * &z0,
            Self::Flow => eps - z0,
        })
    }

    /// Checks the level's kind and returns `(pred, z_t, alpha, sigma)` in the compute dtype,
    /// alpha and sigma shaped `(B, 1, ..., 1)`.
    fn operands(
        self,
        level: &NoiseLevel,
        pred: &Tensor,
        z_t: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        self.check_kind(level.variance_preserving)?;
        let kind = compute_kind(z_t);
        let (p, z) = (pred.f_to_kind(kind)?, z_t.f_to_kind(kind)?);
        let a = per_sample(&level.alpha, &z)?;
        let s = per_sample(&level.sigma, &z)?;
        Ok((p, z, a, s))
    }

    /// The clean sample implied by prediction `pred` at the noisy `z_t`: `(B, ...)` f32.
    pub fn to_x0(
        self,
        schedule: &NoiseSchedule,
        pred: &Tensor,
        z_t: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        self.to_x0_at(&NoiseLevel::at(schedule, t)?, pred, z_t)
    }

    /// [`Self::to_x0`] at a given noise level.
    pub fn to_x0_at(self, level: &NoiseLevel, pred: &Tensor, z_t: &Tensor) -> Result<Tensor> {
        let (p, z, a, s) = self.operands(level, pred, z_t)?;
        Ok(match self {
            Self::Eps => (z - s * p) / a,
            Self::V => a * z - s * p,
            Self::X0 => p,
            Self::Flow => z - s * p,
        })
    }

    /// The noise implied by prediction `pred` at the noisy `z_t`: `(B, ...)` f32.
    pub fn to_eps(
        self,
        schedule: &NoiseSchedule,
        pred: &Tensor,
        z_t: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        self.to_eps_at(&NoiseLevel::at(schedule, t)?, pred, z_t)
    }

    /// [`Self::to_eps`] at a given noise level.
    pub fn to_eps_at(self, level: &NoiseLevel, pred: &Tensor, z_t: &Tensor) -> Result<Tensor> {
        let (p, z, a, s) = self.operands(level, pred, z_t)?;
        Ok(match self {
            Self::Eps => p,
            Self::V => a * p + s * z,
            Self::X0 => (z - a * p) / s,
            Self::Flow => z + a * p,
        })
    }

    /// `d x0 / d prediction` per sample, `(B,)`: the factor that turns an error in the
    /// prediction into an error in x0 (eps: sigma/alpha, v: sigma, x0: 1, flow: t).
    pub fn x0_sensitivity(self, level: &NoiseLevel) -> Result<Tensor> {
        self.check_kind(level.variance_preserving)?;
        Ok(match self {
            Self::Eps => &level.sigma / &level.alpha,
            Self::V | Self::Flow => level.sigma.shallow_clone(),
            Self::X0 => level.sigma.f_ones_like()?,
        })
    }
}
