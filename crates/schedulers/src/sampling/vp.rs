//! Samplers that work on the variance-preserving sample itself: DDPM, DDIM, DPM-Solver++(2M).

use tch::Tensor;

use super::{
    Model, NoiseSource, PreviousTimestep, SamplerConfig, call, call_with_variance, grid, karras,
    level,
};
use crate::error::Result;
use crate::parameterization::Parameterization;
use crate::schedule::DiscreteSchedule;

fn clip(x0: Tensor, clip: Option<f64>) -> Result<Tensor> {
    Ok(match clip {
        Some(c) => x0.f_clamp(-c, c)?,
        None => x0,
    })
}

/// DDPM ancestral sampling with the "fixed_small" posterior variance (Ho et al. eq. 7), or,
/// for a model with a learned variance `v` (and `c.learned_variance`), diffusers'
/// "learned_range": `exp(frac log(beta_t) + (1 - frac) log(fixed_small_t))` with
/// `frac = (v + 1) / 2`, `beta_t = 1 - ab_t / ab_prev` of the (possibly respaced) step.
pub(super) fn ddpm(
    d: &DiscreteSchedule,
    c: &SamplerConfig,
    p: Parameterization,
    noise: &Tensor,
    model: &mut Model<'_>,
    noise_source: &mut dyn NoiseSource,
    report: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let ab = d.alphas_cumprod_host();
    let ts = grid::ddpm_timesteps(d.num_train_timesteps(), c.steps, c.spacing(), c.steps_offset);
    let mut x = noise.shallow_clone();
    for (i, &t) in ts.iter().enumerate() {
        let prev = ts.get(i + 1).copied().unwrap_or(-1);
        let ab_t = ab[t as usize] as f64;
        let ab_prev = if prev >= 0 { ab[prev as usize] as f64 } else { 1.0 };
        let current_alpha = ab_t / ab_prev;
        let current_beta = 1.0 - current_alpha;
        let (out, v) = call_with_variance(model, &x, t as f32)?;
        let lvl = level(ab_t.sqrt(), (1.0 - ab_t).sqrt(), &x, true)?;
        let x0 = clip(p.to_x0_at(&lvl, &out, &x)?, c.clip_x0)?;
        let x0_coeff = ab_prev.sqrt() * current_beta / (1.0 - ab_t);
        let x_coeff = current_alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t);
        let mut next = x0 * x0_coeff + &x * x_coeff;
        if t > 0 {
            let variance = ((1.0 - ab_prev) / (1.0 - ab_t) * current_beta).max(1e-20);
            let z = noise_source.next(&x)?;
            next += match v.filter(|_| c.learned_variance) {
                Some(v) => {
                    let frac: Tensor = (v + 1.0) / 2.0;
                    let log_var: Tensor =
                        &frac * current_beta.ln() + (1f64 - &frac) * variance.ln();
                    z * (log_var * 0.5).exp()
                }
                None => z * variance.sqrt(),
            };
        }
        x = next;
        report(i, &x);
    }
    Ok(x)
}

/// DDIM (Song et al. eq. 12) with stochasticity eta; the final step goes to alpha_bar = 1.
pub(super) fn ddim(
    d: &DiscreteSchedule,
    c: &SamplerConfig,
    p: Parameterization,
    noise: &Tensor,
    model: &mut Model<'_>,
    noise_source: &mut dyn NoiseSource,
    report: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let ab = d.alphas_cumprod_host();
    let n = d.num_train_timesteps();
    let ts = grid::ddpm_timesteps(n, c.steps, c.spacing(), c.steps_offset);
    let mut x = noise.shallow_clone();
    for (i, &t) in ts.iter().enumerate() {
        let prev = match c.ddim_previous {
            PreviousTimestep::NextInGrid => ts.get(i + 1).copied().unwrap_or(-1),
            PreviousTimestep::DiffusersStride => t - n / c.steps as i64,
        };
        let ab_t = ab[t as usize] as f64;
        let ab_prev = if prev >= 0 { ab[prev as usize] as f64 } else { 1.0 };
        let out = call(model, &x, t as f32)?;
        let lvl = level(ab_t.sqrt(), (1.0 - ab_t).sqrt(), &x, true)?;
        let x0 = clip(p.to_x0_at(&lvl, &out, &x)?, c.clip_x0)?;
        let eps = p.to_eps_at(&lvl, &out, &x)?;
        let variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev);
        let std = c.eta * variance.sqrt();
        let direction = (1.0 - ab_prev - std * std).max(0.0).sqrt();
        let mut next = x0 * ab_prev.sqrt() + eps * direction;
        if c.eta > 0.0 {
            next += noise_source.next(&x)? * std;
        }
        x = next;
        report(i, &x);
    }
    Ok(x)
}

/// `(alpha, sigma, lambda)` of a k-diffusion sigma: `alpha = 1 / sqrt(1 + s^2)`,
/// `sigma = s alpha`, `lambda = log(alpha / sigma)`.
fn alpha_sigma_lambda(s: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    let sigma = s * alpha;
    (alpha, sigma, alpha.ln() - sigma.ln())
}

/// DPM-Solver++(2M) (Lu et al. 2022, algorithm 2, midpoint form), data prediction; first
/// order at the first step and at the last step (to sigma = 0).
pub(super) fn dpmpp_2m(
    d: &DiscreteSchedule,
    c: &SamplerConfig,
    p: Parameterization,
    noise: &Tensor,
    model: &mut Model<'_>,
    report: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let k = karras::k_sigmas(d)?;
    let ts = grid::dpm_timesteps(d.num_train_timesteps(), c.steps, c.spacing(), c.steps_offset);
    let mut sigmas: Vec<f32> = ts.iter().map(|&t| grid::interp(t as f64, &k) as f32).collect();
    sigmas.push(0.0);
    let mut x = noise.shallow_clone();
    let mut previous: Option<Tensor> = None;
    for (i, &t) in ts.iter().enumerate() {
        let (s, s_next) = (sigmas[i] as f64, sigmas[i + 1] as f64);
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(s);
        let out = call(model, &x, t as f32)?;
        let x0 = p.to_x0_at(&level(alpha_s, sigma_s, &x, true)?, &out, &x)?;
        x = if s_next == 0.0 {
            x0.shallow_clone()
        } else {
            let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(s_next);
            let h = lambda_t - lambda_s;
            let phi = alpha_t * ((-h).exp() - 1.0);
            let first = &x * (sigma_t / sigma_s) - &x0 * phi;
            match &previous {
                None => first,
                Some(prev_x0) => {
                    let (_, _, lambda_prev) = alpha_sigma_lambda(sigmas[i - 1] as f64);
                    let r0 = (lambda_s - lambda_prev) / h;
                    let d1 = (&x0 - prev_x0) * (1.0 / r0);
                    first - d1 * (0.5 * phi)
                }
            }
        };
        previous = Some(x0);
        report(i, &x);
    }
    Ok(x)
}
