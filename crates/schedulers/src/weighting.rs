//! Per-sample helpers used by losses: min-SNR weights and the SNR gate of the latent
//! perceptual loss.

use tch::Tensor;

use crate::error::{Result, invalid};
use crate::parameterization::{NoiseLevel, Parameterization};
use crate::schedule::NoiseSchedule;

/// Min-SNR-gamma loss weights (Hang et al. 2023), `(B,)`: the weight that makes a loss on
/// the prediction equal `min(snr, gamma)` times the x0 loss, i.e.
/// `min(snr, gamma) * (d x0 / d pred)^2`. This gives the published forms: eps
/// `min(snr, gamma) / snr`, v `min(snr, gamma) / (snr + 1)`, x0 `min(snr, gamma)`, and for
/// flow `min(snr, gamma) t^2`.
pub fn min_snr_weights(
    schedule: &NoiseSchedule,
    parameterization: Parameterization,
    t: &Tensor,
    gamma: f64,
) -> Result<Tensor> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(invalid("min_snr_gamma", format!("must be positive, got {gamma}")));
    }
    let snr = schedule.snr(t)?;
    let level = NoiseLevel::at(schedule, t)?;
    let sensitivity = parameterization.x0_sensitivity(&level)?;
    Ok(snr.f_clamp_max(gamma)? * sensitivity.f_square()?)
}

/// The LPL gate: `snr(t) >= tau`, `(B,)` bool (no host synchronisation).
pub fn snr_gate(schedule: &NoiseSchedule, t: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(schedule.snr(t)?.f_ge(tau)?)
}

/// The diffusers LPL port's gate: `t < max_timestep` on the model's time scale, `(B,)` bool.
pub fn timestep_gate(schedule: &NoiseSchedule, t: &Tensor, max_timestep: f64) -> Result<Tensor> {
    Ok(schedule.model_time(t)?.f_lt(max_timestep)?)
}
