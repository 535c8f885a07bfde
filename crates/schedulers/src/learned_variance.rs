//! Learned variance on a discrete schedule, as improved DDPM (Nichol & Dhariwal 2021) and
//! DiT train and sample it: the model outputs `2C` channels, the first `C` its usual
//! prediction and the last `C` a value `v` in about `[-1, 1]` that interpolates the
//! log-variance of `p(x_{t-1} | x_t)` between the posterior's (`v = -1`) and `beta_t`
//! (`v = 1`) ("learned_range").
//!
//! Training adds the variational bound term [`VarianceTables::vlb_bits_per_dim`] to the
//! simple loss, with the mean part frozen (detached), so the bound trains only the variance,
//! exactly as `GaussianDiffusion.training_losses` of improved-DDPM / ADM / DiT does; sampling
//! draws DDPM's step noise with the learned variance (`DDPMScheduler(variance_type =
//! "learned_range")`).
//!
//! The tables follow ADM's `GaussianDiffusion` (computed in f64 from the schedule's betas,
//! used in f32): `posterior_variance = beta_t (1 - ab_{t-1}) / (1 - ab_t)`, its log clipped
//! at t = 0 to the value at t = 1, and the posterior mean coefficients.

use tch::{Device, Kind, Tensor};

use crate::error::{Result, ScheduleError};
use crate::schedule::{DiscreteSchedule, per_sample};

/// ADM's per-timestep tables for a learned-range variance, each `(N,)` f32.
#[derive(Debug)]
pub struct VarianceTables {
    /// `log(beta_t)`: the log-variance at `v = 1`.
    log_betas: Tensor,
    /// `log(posterior_variance_t)`, with t = 0 taking t = 1's value: the log-variance at
    /// `v = -1`.
    posterior_log_variance_clipped: Tensor,
    /// `beta_t sqrt(ab_{t-1}) / (1 - ab_t)`: the coefficient of x0 in the posterior mean.
    posterior_mean_coef_x0: Tensor,
    /// `(1 - ab_{t-1}) sqrt(alpha_t) / (1 - ab_t)`: the coefficient of x_t.
    posterior_mean_coef_xt: Tensor,
}

/// Splits a learned-variance prediction `(B, 2C, ...)` into its mean part and its variance
/// values `v`, each `(B, C, ...)`; `None` for `v` when the prediction has `channels`
/// channels (no learned variance). Any other channel count is an error.
pub fn split_prediction(pred: &Tensor, channels: i64) -> Result<(Tensor, Option<Tensor>)> {
    let c = pred.size().get(1).copied().unwrap_or(0);
    if c == channels {
        Ok((pred.shallow_clone(), None))
    } else if c == 2 * channels {
        Ok((pred.f_narrow(1, 0, channels)?, Some(pred.f_narrow(1, channels, channels)?)))
    } else {
        Err(ScheduleError::Compute(format!(
            "the model's prediction has {c} channels; expected {channels} (or {} with a learned variance)",
            2 * channels
        )))
    }
}

impl VarianceTables {
    /// The tables of `schedule`, on `device`.
    pub fn new(schedule: &DiscreteSchedule, device: Device) -> Result<Self> {
        let betas = Vec::<f64>::try_from(&schedule.betas().f_to_kind(Kind::Double)?)?;
        let n = betas.len();
        if n < 2 {
            return Err(ScheduleError::Compute(
                "a learned variance needs at least 2 timesteps".to_string(),
            ));
        }
        let mut ab = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            ab.push(acc);
        }
        let ab_prev = |t: usize| if t == 0 { 1.0 } else { ab[t - 1] };
        let posterior_variance: Vec<f64> =
            (0..n).map(|t| betas[t] * (1.0 - ab_prev(t)) / (1.0 - ab[t])).collect();
        let clipped: Vec<f64> =
            (0..n).map(|t| posterior_variance[t.max(1)].ln()).collect::<Vec<_>>();
        let coef_x0: Vec<f64> =
            (0..n).map(|t| betas[t] * ab_prev(t).sqrt() / (1.0 - ab[t])).collect();
        let coef_xt: Vec<f64> =
            (0..n).map(|t| (1.0 - ab_prev(t)) * (1.0 - betas[t]).sqrt() / (1.0 - ab[t])).collect();
        let table = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_slice(&v).f_to_kind(Kind::Float)?.f_to_device(device)?)
        };
        Ok(Self {
            log_betas: table(betas.iter().map(|b| b.ln()).collect())?,
            posterior_log_variance_clipped: table(clipped)?,
            posterior_mean_coef_x0: table(coef_x0)?,
            posterior_mean_coef_xt: table(coef_xt)?,
        })
    }

    fn at(table: &Tensor, t: &Tensor, like: &Tensor) -> Result<Tensor> {
        per_sample(&table.f_index_select(0, t)?, like)
    }

    /// Integer timesteps `(B,)` as i64 on the tables' device; floating-point times are
    /// refused (the bound is defined on the discrete chain only).
    fn index(&self, t: &Tensor) -> Result<Tensor> {
        if t.is_floating_point() {
            return Err(ScheduleError::Compute(
                "a learned variance is trained on integer timesteps: use \
                 `time_sampling = \"uniform_discrete\"`"
                    .to_string(),
            ));
        }
        Ok(t.f_to_kind(Kind::Int64)?.f_to_device(self.log_betas.device())?)
    }

    /// The mean and clipped log-variance of the posterior `q(x_{t-1} | x_t, x_0)`, each
    /// `(B, C, ...)`, for `x0`, `x_t` `(B, C, ...)` and integer `t` `(B,)`.
    pub fn posterior(&self, x0: &Tensor, x_t: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = self.index(t)?;
        let mean = Self::at(&self.posterior_mean_coef_x0, &t, x0)? * x0
            + Self::at(&self.posterior_mean_coef_xt, &t, x_t)? * x_t;
        let log_var = Self::at(&self.posterior_log_variance_clipped, &t, x0)?
            .f_expand_as(x0)?
            .f_contiguous()?;
        Ok((mean, log_var))
    }

    /// The model's log-variance `(B, C, ...)` from its variance values `v` `(B, C, ...)`:
    /// `frac log(beta_t) + (1 - frac) log(posterior_variance_t)` (clipped), with
    /// `frac = (v + 1) / 2`.
    pub fn model_log_variance(&self, v: &Tensor, t: &Tensor) -> Result<Tensor> {
        let t = self.index(t)?;
        let v = v.f_to_kind(Kind::Float)?;
        let frac = (&v + 1.0) / 2.0;
        let max_log = Self::at(&self.log_betas, &t, &v)?;
        let min_log = Self::at(&self.posterior_log_variance_clipped, &t, &v)?;
        Ok(&frac * max_log + (1.0 - &frac) * min_log)
    }

    /// The variational bound term of one timestep per sample, `(B,)` f32 in bits per
    /// dimension: `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for t > 0 and the
    /// discretised Gaussian decoder NLL of `x0` (values on a 2/255 grid in `[-1, 1]`, as
    /// ADM assumes) at t = 0. `p` has the posterior mean of `x0_hat` (the model's clean
    /// prediction: pass it detached to train the variance alone, as DiT does) and the
    /// log-variance of `v`.
    pub fn vlb_bits_per_dim(
        &self,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        x0_hat: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (true_mean, true_log_var) = self.posterior(x0, x_t, t)?;
        let (model_mean, _) = self.posterior(x0_hat, x_t, t)?;
        let model_log_var = self.model_log_variance(v, t)?;
        let kl = normal_kl(&true_mean, &true_log_var, &model_mean, &model_log_var);
        let nll = -discretized_gaussian_log_likelihood(x0, &model_mean, &(&model_log_var * 0.5))?;
        let ln2 = std::f64::consts::LN_2;
        let kl = kl.f_flatten(1, -1)?.f_mean_dim(1, false, Kind::Float)? / ln2;
        let nll = nll.f_flatten(1, -1)?.f_mean_dim(1, false, Kind::Float)? / ln2;
        let first = self.index(t)?.f_eq(0)?.f_to_device(kl.device())?;
        Ok(nll.f_where_self(&first, &kl)?)
    }
}

/// `KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))` elementwise (ADM's `normal_kl`).
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Tensor {
    ((logvar2 - logvar1) - 1.0
        + (logvar1 - logvar2).exp()
        + (mean1 - mean2).square() * (-logvar2).exp())
        * 0.5
}

/// ADM's tanh approximation of the standard normal CDF.
fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    ((x + x.pow_tensor_scalar(3) * 0.044715) * k).tanh() * 0.5 + 0.5
}

/// The log-likelihood, elementwise, of `x` (values in `[-1, 1]` on the 8-bit grid) under a
/// Gaussian of `means` and `log_scales` (log std) discretised to bins of width 2/255, the
/// edge bins open (ADM's `discretized_gaussian_log_likelihood`).
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Result<Tensor> {
    let centered = x - means;
    let inv_std = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_std * (&centered + 1.0 / 255.0)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_std * (&centered - 1.0 / 255.0)));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (1f64 - &cdf_min).clamp_min(1e-12).log();
    let log_delta = (&cdf_plus - &cdf_min).clamp_min(1e-12).log();
    let upper = log_one_minus_cdf_min.f_where_self(&x.f_gt(0.999)?, &log_delta)?;
    Ok(log_cdf_plus.f_where_self(&x.f_lt(-0.999)?, &upper)?)
}
