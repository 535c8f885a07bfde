//! Euler and Heun in k-diffusion sigma space (`x = z / alpha`, `sigma_k = sigma / alpha`),
//! as diffusers' `EulerDiscreteScheduler` and `HeunDiscreteScheduler` run them.

use tch::{Kind, Tensor};

use super::{Model, SamplerConfig, SamplerKind, TimestepSpacing, call, grid, level};
use crate::error::Result;
use crate::parameterization::Parameterization;
use crate::schedule::DiscreteSchedule;

/// The k-diffusion sigmas `sqrt((1 - ab) / ab)` of every training timestep, f32 as
/// diffusers computes them; with zero terminal SNR the last `ab` is replaced by 2^-24 so that
/// sigma stays finite.
pub(super) fn k_sigmas(d: &DiscreteSchedule) -> Result<Vec<f32>> {
    let mut ab = d.alphas_cumprod().f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?;
    if d.config().rescale_zero_terminal_snr {
        let n = ab.size()[0];
        ab = ab.f_index_fill(0, &Tensor::from_slice(&[n - 1]), 2f64.powi(-24))?;
    }
    let k = ((1f64 - &ab) / &ab).f_pow_tensor_scalar(0.5)?;
    Ok(Vec::<f32>::try_from(&k)?)
}

/// `x0` from the model at sigma `s` for the k-diffusion state `x`: the model sees
/// `x / sqrt(s^2 + 1)`.
fn denoise(
    model: &mut Model<'_>,
    p: Parameterization,
    x: &Tensor,
    s: f32,
    t_model: f32,
) -> Result<Tensor> {
    let scale = (s * s + 1.0).sqrt();
    let input = x / scale as f64;
    let out = call(model, &input, t_model)?;
    let alpha = 1.0 / scale as f64;
    p.to_x0_at(&level(alpha, s as f64 * alpha, x, true)?, &out, &input)
}

pub(super) fn run(
    d: &DiscreteSchedule,
    c: &SamplerConfig,
    p: Parameterization,
    noise: &Tensor,
    model: &mut Model<'_>,
    report: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let k = k_sigmas(d)?;
    let ts = grid::euler_timesteps(d.num_train_timesteps(), c.steps, c.spacing(), c.steps_offset);
    let mut sigmas: Vec<f32> = ts.iter().map(|&t| grid::interp(t as f64, &k) as f32).collect();
    sigmas.push(0.0);
    let max = sigmas.iter().copied().fold(0.0f32, f32::max);
    let init = match c.spacing() {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    };
    let mut x = noise * init as f64;
    let heun = c.sampler == SamplerKind::Heun;
    for i in 0..ts.len() {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = denoise(model, p, &x, s, ts[i])?;
        let derivative = (&x - x0) / s as f64;
        let dt = (s_next - s) as f64;
        x = if heun && s_next > 0.0 {
            let predicted = &x + &derivative * dt;
            let x0_next = denoise(model, p, &predicted, s_next, ts[i + 1])?;
            let derivative_next = (&predicted - x0_next) / s_next as f64;
            &x + (derivative + derivative_next) * (dt / 2.0)
        } else {
            &x + derivative * dt
        };
        report(i, &x);
    }
    Ok(x)
}
