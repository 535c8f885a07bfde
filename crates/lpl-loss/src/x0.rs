//! The predicted clean latent from any parameterisation (shared/LPL.md step 2).

use lpl_schedulers::{NoiseSchedule, Parameterization};
use tch::Tensor;

use crate::error::Result;

/// `x0_hat` `(B, C, h, w)` f32 from the denoiser's `prediction` at `z_t` and t `(B,)`:
/// eps, v, x0 and flow velocity all go through lpl-schedulers' exact conversions.
pub fn x0_from_prediction(
    prediction: &Tensor,
    z_t: &Tensor,
    t: &Tensor,
    parameterization: Parameterization,
    schedule: &NoiseSchedule,
) -> Result<Tensor> {
    Ok(parameterization.to_x0(schedule, prediction, z_t, t)?)
}
