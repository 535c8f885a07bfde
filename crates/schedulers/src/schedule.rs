//! Noise schedules: discrete variance-preserving (DDPM family) and rectified flow.
//!
//! Both write the noisy sample as `z_t = alpha(t) * z_0 + sigma(t) * eps`:
//! - discrete VP: `alpha = sqrt(alpha_bar_t)`, `sigma = sqrt(1 - alpha_bar_t)`, t an index in
//!   `[0, N)` (integer tensors) or a continuous position in `[0, N - 1]` (float tensors);
//! - rectified flow: `alpha = 1 - t`, `sigma = t`, t in `[0, 1]`.
//!
//! Every function takes one t per sample, shape `(B,)`, and returns per-sample tensors `(B,)`
//! in f32 on t's device.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, ScheduleError, invalid};

/// How the betas of a discrete schedule are laid out over its N training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, N)` (DDPM, DiT).
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), N)^2` (Stable Diffusion).
    ScaledLinear,
    /// Nichol & Dhariwal's cosine `alpha_bar`, betas capped at 0.999 (ignores beta_start/end).
    SquaredcosCapV2,
}

fn default_train_steps() -> i64 {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn default_shift() -> f64 {
    1.0
}

/// A discrete variance-preserving schedule (diffusers' `DDPMScheduler` tables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteConfig {
    /// N, the number of training timesteps.
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: i64,
    #[serde(default = "default_beta_start")]
    /// First beta (ignored by the cosine schedule).
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    /// Last beta (ignored by the cosine schedule).
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    /// How betas go from `beta_start` to `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// Rescale to zero terminal SNR (Lin et al. 2023); use with v-prediction.
    #[serde(default)]
    pub rescale_zero_terminal_snr: bool,
}

impl Default for DiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: default_train_steps(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            beta_schedule: default_beta_schedule(),
            rescale_zero_terminal_snr: false,
        }
    }
}

impl DiscreteConfig {
    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps < 2 {
            return Err(invalid(
                "num_train_timesteps",
                format!("must be >= 2, got {}", self.num_train_timesteps),
            ));
        }
        if self.beta_schedule != BetaSchedule::SquaredcosCapV2 {
            for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(v.is_finite() && v > 0.0 && v < 1.0) {
                    return Err(invalid(field, format!("must be in (0, 1), got {v}")));
                }
            }
            if self.beta_end < self.beta_start {
                return Err(invalid(
                    "beta_end",
                    format!("must be >= beta_start ({}), got {}", self.beta_start, self.beta_end),
                ));
            }
        }
        Ok(())
    }
}

/// Rectified flow / flow matching: `z_t = (1 - t) z_0 + t eps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Scale between t in [0, 1] and the model's time input (`t * N`, as SD3 and FLUX do).
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: i64,
    /// Time shift s >= 1 moves mass to high noise: `t' = s t / (1 + (s - 1) t)`; applied to
    /// training-time t sampling and to sampling grids.
    #[serde(default = "default_shift")]
    pub shift: f64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self { num_train_timesteps: default_train_steps(), shift: default_shift() }
    }
}

impl FlowConfig {
    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps < 1 {
            return Err(invalid(
                "num_train_timesteps",
                format!("must be >= 1, got {}", self.num_train_timesteps),
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(invalid("shift", format!("must be a positive number, got {}", self.shift)));
        }
        Ok(())
    }
}

/// A schedule as written in a run config: `kind = "discrete"` or `kind = "flow"` plus that
/// kind's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleConfig {
    /// A discrete variance-preserving schedule.
    Discrete(DiscreteConfig),
    /// Rectified flow.
    Flow(FlowConfig),
}

/// Names accepted by [`ScheduleConfig::preset`].
pub const SCHEDULE_PRESETS: [&str; 5] = ["sd15", "sdxl", "dit", "flow", "sd3"];

impl ScheduleConfig {
    /// Named presets: `sd15` and `sdxl` (scaled-linear 0.00085..0.012), `dit` (linear
    /// 1e-4..0.02), `flow` (rectified flow, no shift) and `sd3` (rectified flow, shift 3).
    pub fn preset(name: &str) -> Result<Self> {
        let sd = DiscreteConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            ..DiscreteConfig::default()
        };
        Ok(match name {
            "sd15" | "sdxl" => Self::Discrete(sd),
            "dit" => Self::Discrete(DiscreteConfig::default()),
            "flow" => Self::Flow(FlowConfig::default()),
            "sd3" => Self::Flow(FlowConfig { shift: 3.0, ..FlowConfig::default() }),
            _ => {
                return Err(ScheduleError::UnknownPreset {
                    name: name.to_string(),
                    known: SCHEDULE_PRESETS.join(", "),
                });
            }
        })
    }

    /// Checks every field of the chosen kind.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Discrete(c) => c.validate(),
            Self::Flow(c) => c.validate(),
        }
    }
}

/// The betas of a discrete schedule, `(N,)` f32 on the CPU, computed exactly as diffusers
/// does (f32 torch ops, the cosine schedule in f64 host arithmetic).
pub fn betas(config: &DiscreteConfig) -> Result<Tensor> {
    config.validate()?;
    let n = config.num_train_timesteps;
    let opts = (Kind::Float, Device::Cpu);
    let betas = match config.beta_schedule {
        BetaSchedule::Linear => Tensor::f_linspace(config.beta_start, config.beta_end, n, opts)?,
        BetaSchedule::ScaledLinear => {
            Tensor::f_linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n, opts)?
                .f_pow_tensor_scalar(2)?
        }
        BetaSchedule::SquaredcosCapV2 => Tensor::from_slice(&cosine_betas(n, 0.999)),
    };
    if config.rescale_zero_terminal_snr { rescale_zero_terminal_snr(&betas) } else { Ok(betas) }
}

/// `alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2`, betas `1 - alpha_bar(t2) /
/// alpha_bar(t1)` capped at `max_beta`, in f64 (floating-point division throughout: integer
/// division here, a bug seen in public ports, makes most betas 0 or 1).
pub fn cosine_betas(n: i64, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// Lin et al. (2023), algorithm 1: shift and scale `sqrt(alpha_bar)` so that its last value
/// is exactly 0 and its first unchanged; torch ops in diffusers' order, in the dtype of
/// `betas` (f32 for the schedules here; f64 gives the reference the parity test checks).
///
/// Conditioning: `beta_i = 1 - (d_i / d_{i-1})^2` with `d_i = sqrt(alpha_bar_i) -
/// sqrt(alpha_bar_{N-1})`, so the last betas divide by small differences of nearly equal
/// square roots and amplify their last bits (about 300x for the SD schedule near `t = N-1`).
pub fn rescale_zero_terminal_snr(betas: &Tensor) -> Result<Tensor> {
    let alphas_cumprod = (1f64 - betas).f_cumprod(0, betas.kind())?;
    let sqrt_ab = alphas_cumprod.f_sqrt()?;
    let n = sqrt_ab.size()[0];
    let first = sqrt_ab.f_get(0)?;
    let last = sqrt_ab.f_get(n - 1)?;
    let scale = &first / (&first - &last);
    let sqrt_ab = (sqrt_ab - &last) * scale;
    let ab = sqrt_ab.f_pow_tensor_scalar(2)?;
    let ratios = ab.f_narrow(0, 1, n - 1)? / ab.f_narrow(0, 0, n - 1)?;
    let alphas = Tensor::f_cat(&[ab.f_narrow(0, 0, 1)?, ratios], 0)?;
    Ok(1.0 - alphas)
}

/// A discrete VP schedule: betas and `alpha_bar` tables of length N.
#[derive(Debug)]
pub struct DiscreteSchedule {
    config: DiscreteConfig,
    /// `(N,)` f32.
    betas: Tensor,
    /// `(N,)` f32, `cumprod(1 - betas)`.
    alphas_cumprod: Tensor,
    /// The same table on the CPU, for lookups with t on the CPU (the LPL gate, host-side
    /// weights) without a device-to-host copy.
    cpu_alphas_cumprod: Tensor,
    host_alphas_cumprod: Vec<f32>,
}

impl Clone for DiscreteSchedule {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            betas: self.betas.shallow_clone(),
            alphas_cumprod: self.alphas_cumprod.shallow_clone(),
            cpu_alphas_cumprod: self.cpu_alphas_cumprod.shallow_clone(),
            host_alphas_cumprod: self.host_alphas_cumprod.clone(),
        }
    }
}

impl DiscreteSchedule {
    /// Builds the tables on the CPU; [`Self::to_device`] moves them.
    pub fn new(config: &DiscreteConfig) -> Result<Self> {
        let betas = betas(config)?;
        // Clamped to [0, 1]: the zero-SNR rescale leaves -0.0 or -1e-10 at t = N-1.
        let alphas_cumprod = (1f64 - &betas).f_cumprod(0, Kind::Float)?.f_clamp(0.0, 1.0)?;
        let host_alphas_cumprod = Vec::<f32>::try_from(&alphas_cumprod)?;
        Ok(Self {
            config: config.clone(),
            betas,
            cpu_alphas_cumprod: alphas_cumprod.shallow_clone(),
            alphas_cumprod,
            host_alphas_cumprod,
        })
    }

    /// The same schedule with its tables on `device` (lookups then need no copy).
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            betas: self.betas.to_device(device),
            alphas_cumprod: self.alphas_cumprod.to_device(device),
            ..self.clone()
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DiscreteConfig {
        &self.config
    }

    /// N.
    pub fn num_train_timesteps(&self) -> i64 {
        self.config.num_train_timesteps
    }

    /// `(N,)` f32.
    pub fn betas(&self) -> &Tensor {
        &self.betas
    }

    /// `(N,)` f32.
    pub fn alphas_cumprod(&self) -> &Tensor {
        &self.alphas_cumprod
    }

    /// The `alpha_bar` table on the host (for building sampling grids).
    pub fn alphas_cumprod_host(&self) -> &[f32] {
        &self.host_alphas_cumprod
    }

    /// `alpha_bar(t)`, `(B,)` f32, for integer t (table lookup) or float t in `[0, N - 1]`:
    /// between table entries the k-diffusion sigma `sqrt((1 - ab) / ab)` is interpolated
    /// linearly, as diffusers' Euler and Heun schedulers do; at integer positions the table
    /// value is returned exactly.
    pub fn alpha_bar(&self, t: &Tensor) -> Result<Tensor> {
        let table = if t.device() == Device::Cpu {
            self.cpu_alphas_cumprod.shallow_clone()
        } else {
            self.alphas_cumprod.f_to_device(t.device())?
        };
        if !t.is_floating_point() {
            return Ok(table.f_index_select(0, &t.f_to_kind(Kind::Int64)?)?);
        }
        let n = self.config.num_train_timesteps;
        let t = t.f_to_kind(Kind::Float)?.f_clamp(0.0, (n - 1) as f64)?;
        let lo = t.f_floor()?;
        let w = &t - &lo;
        let lo_i = lo.f_to_kind(Kind::Int64)?;
        let hi_i = (&lo_i + 1).f_clamp_max(n - 1)?;
        let ab_lo = table.f_index_select(0, &lo_i)?;
        let ab_hi = table.f_index_select(0, &hi_i)?;
        let k_sigma = |ab: &Tensor| ((1f64 - ab) / ab.clamp_min(1e-30)).sqrt();
        let s = k_sigma(&ab_lo) * (1f64 - &w) + k_sigma(&ab_hi) * &w;
        let interpolated = (s.square() + 1.0).reciprocal();
        Ok(ab_lo.f_where_self(&w.f_eq(0.0)?, &interpolated)?)
    }
}

/// Rectified flow: `alpha = 1 - t`, `sigma = t`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    config: FlowConfig,
}

impl FlowSchedule {
    /// Validates `config`.
    pub fn new(config: &FlowConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config: config.clone() })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// `s t / (1 + (s - 1) t)` for the configured shift s (identity when s = 1).
    pub fn shift_time(&self, t: f64) -> f64 {
        shift_time(self.config.shift, t)
    }
}

/// The SD3 / FLUX time shift `s t / (1 + (s - 1) t)`.
pub fn shift_time(shift: f64, t: f64) -> f64 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// Either kind of schedule, with the per-sample quantities every loss and sampler needs.
#[derive(Debug, Clone)]
pub enum NoiseSchedule {
    /// A discrete variance-preserving schedule.
    Discrete(DiscreteSchedule),
    /// Rectified flow.
    Flow(FlowSchedule),
}

impl NoiseSchedule {
    /// Validates `config` and builds the schedule (tables on the CPU).
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        Ok(match config {
            ScheduleConfig::Discrete(c) => Self::Discrete(DiscreteSchedule::new(c)?),
            ScheduleConfig::Flow(c) => Self::Flow(FlowSchedule::new(c)?),
        })
    }

    /// The schedule of a named preset ([`ScheduleConfig::preset`]).
    pub fn preset(name: &str) -> Result<Self> {
        Self::new(&ScheduleConfig::preset(name)?)
    }

    /// The same schedule with its tables on `device`.
    pub fn to_device(&self, device: Device) -> Self {
        match self {
            Self::Discrete(d) => Self::Discrete(d.to_device(device)),
            Self::Flow(f) => Self::Flow(f.clone()),
        }
    }

    /// `"discrete"` or `"flow"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Discrete(_) => "discrete",
            Self::Flow(_) => "flow",
        }
    }

    /// N: the number of training timesteps, also the scale of flow's model time.
    pub fn num_train_timesteps(&self) -> i64 {
        match self {
            Self::Discrete(d) => d.num_train_timesteps(),
            Self::Flow(f) => f.config.num_train_timesteps,
        }
    }

    /// `(alpha(t), sigma(t))`, each `(B,)` f32 on t's device.
    pub fn alpha_sigma(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Discrete(d) => {
                let ab = d.alpha_bar(t)?;
                Ok((ab.f_sqrt()?, (1f64 - &ab).f_sqrt()?))
            }
            Self::Flow(_) => {
                let t = t.f_to_kind(Kind::Float)?;
                Ok((1f64 - &t, t))
            }
        }
    }

    /// `snr(t) = alpha^2 / sigma^2`, `(B,)` f32; flow: `((1 - t) / t)^2`. Monotone decreasing
    /// in t; infinite where sigma = 0.
    pub fn snr(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Self::Discrete(d) => {
                let ab = d.alpha_bar(t)?;
                Ok(&ab / (1f64 - &ab))
            }
            Self::Flow(_) => {
                let t = t.f_to_kind(Kind::Float)?;
                Ok(((1f64 - &t) / &t).f_square()?)
            }
        }
    }

    /// `z_t = alpha(t) z_0 + sigma(t) eps`; `z0`, `eps`: `(B, ...)`, t: `(B,)`. Computed in
    /// the dtype of `z0`.
    pub fn add_noise(&self, z0: &Tensor, eps: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (alpha, sigma) = self.alpha_sigma(t)?;
        Ok(per_sample(&alpha, z0)? * z0 + per_sample(&sigma, z0)? * eps)
    }

    /// The time the denoiser receives, `(B,)` f32: the discrete timestep itself, or
    /// `t * N` for flow (the SD3 / FLUX convention).
    pub fn model_time(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.f_to_kind(Kind::Float)?;
        Ok(match self {
            Self::Discrete(_) => t,
            Self::Flow(f) => t * f.config.num_train_timesteps as f64,
        })
    }
}

/// Reshapes a per-sample `(B,)` tensor to `(B, 1, ..., 1)` with the rank of `like` and the
/// dtype of `like` (f32 where `like` is not floating point).
pub fn per_sample(v: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    let kind = if like.is_floating_point() { like.kind() } else { Kind::Float };
    Ok(v.f_to_kind(kind)?.f_view(shape.as_slice())?)
}
