//! Samplers as functions over a time grid, for any model `FnMut(x_t, t) -> prediction`.
//!
//! The model receives `x_t: (B, ...)` and `t: (B,)` f32 holding the model time (a train
//! timestep for discrete schedules, `sigma * N` for flow, as in diffusers) and returns its
//! prediction in the configured [`Parameterization`]. Discrete-schedule samplers: DDPM
//! ancestral, DDIM (eta), Euler and Heun (k-diffusion sigma space, as diffusers'
//! `EulerDiscreteScheduler` / `HeunDiscreteScheduler`), DPM-Solver++(2M). Flow: Euler and
//! Heun over a shifted grid. Grids follow diffusers' `set_timesteps` exactly.

mod flow;
pub mod grid;
mod karras;
mod vp;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, ScheduleError, invalid};
use crate::parameterization::{NoiseLevel, Parameterization};
use crate::schedule::NoiseSchedule;
pub use grid::TimestepSpacing;

/// The sampling algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDPM ancestral sampling ("fixed_small" posterior variance, or the model's learned
    /// one: "learned_range").
    Ddpm,
    /// DDIM with stochasticity `eta` (0: deterministic, 1: DDPM-like).
    Ddim,
    /// Euler in k-diffusion sigma space.
    Euler,
    /// Heun (2nd order) in sigma space; the last step, to sigma = 0, is Euler.
    Heun,
    /// DPM-Solver++ multistep, order 2 (midpoint), first order at the first and last steps.
    DpmSolverPp2m,
    /// Euler on the flow ODE.
    FlowEuler,
    /// Heun on the flow ODE; the last step, to t = 0, is Euler.
    FlowHeun,
}

impl SamplerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::DpmSolverPp2m => "dpm_solver_pp_2m",
            Self::FlowEuler => "flow_euler",
            Self::FlowHeun => "flow_heun",
        }
    }

    fn is_flow(self) -> bool {
        matches!(self, Self::FlowEuler | Self::FlowHeun)
    }

    /// diffusers' default spacing for the corresponding scheduler.
    fn default_spacing(self) -> TimestepSpacing {
        match self {
            Self::Ddpm | Self::Ddim => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        }
    }
}

/// Which timestep DDIM steps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviousTimestep {
    /// The next timestep of the grid, and `alpha_bar = 1` after the last.
    NextInGrid,
    /// `t - N // steps` (integer division), and `alpha_bar = 1` below 0: diffusers'
    /// `DDIMScheduler` (`set_alpha_to_one`). The default, so that results compare with
    /// diffusers'. It equals `NextInGrid` for leading spacing; for linspace, and for
    /// trailing spacing when `steps` does not divide `N` (7 steps on 1000: the grid 999,
    /// 856, ..., 142 is left by strides of 142, to 857, ..., 143, then 1), it steps off the
    /// grid.
    #[default]
    DiffusersStride,
}

fn default_steps() -> usize {
    50
}

/// A sampler as written in a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// The algorithm.
    pub sampler: SamplerKind,
    /// Number of steps (model evaluations for first-order samplers).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Timestep spacing; default: diffusers' default for that scheduler (leading for DDPM
    /// and DDIM, linspace otherwise). Unused by flow samplers.
    #[serde(default)]
    pub spacing: Option<TimestepSpacing>,
    /// Added to leading-spacing timesteps (SD uses 1).
    #[serde(default)]
    pub steps_offset: i64,
    /// DDIM stochasticity.
    #[serde(default)]
    pub eta: f64,
    /// Clamp predicted x0 to `[-c, c]` (DDPM, DDIM); none by default, as for latents.
    #[serde(default)]
    pub clip_x0: Option<f64>,
    /// DDIM's previous-timestep rule.
    #[serde(default)]
    pub ddim_previous: PreviousTimestep,
    /// DDPM: draw the step noise with the model's learned variance when it has one (`2C`
    /// output channels; diffusers' `variance_type = "learned_range"`); `false` uses the
    /// fixed small variance and ignores the learned one. Other samplers always ignore it.
    #[serde(default = "default_true")]
    pub learned_variance: bool,
}

fn default_true() -> bool {
    true
}

impl SamplerConfig {
    /// A config with defaults for everything but the algorithm and step count.
    pub fn new(sampler: SamplerKind, steps: usize) -> Self {
        Self {
            sampler,
            steps,
            spacing: None,
            steps_offset: 0,
            eta: 0.0,
            clip_x0: None,
            ddim_previous: PreviousTimestep::DiffusersStride,
            learned_variance: true,
        }
    }

    /// Sets the timestep spacing.
    pub fn with_spacing(mut self, spacing: TimestepSpacing) -> Self {
        self.spacing = Some(spacing);
        self
    }

    /// Sets DDIM's eta.
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }

    /// The spacing used: the configured one or the scheduler's default.
    pub fn spacing(&self) -> TimestepSpacing {
        self.spacing.unwrap_or(self.sampler.default_spacing())
    }

    /// Checks the fields against `schedule`; the error names the field.
    pub fn validate(&self, schedule: &NoiseSchedule) -> Result<()> {
        let n = schedule.num_train_timesteps();
        if self.steps == 0 {
            return Err(invalid("steps", "must be >= 1"));
        }
        if !self.sampler.is_flow() && self.steps as i64 > n {
            return Err(invalid(
                "steps",
                format!("must be <= num_train_timesteps ({n}), got {}", self.steps),
            ));
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return Err(invalid("eta", format!("must be >= 0, got {}", self.eta)));
        }
        if let Some(c) = self.clip_x0
            && !(c.is_finite() && c > 0.0)
        {
            return Err(invalid("clip_x0", format!("must be positive, got {c}")));
        }
        if self.steps_offset < 0 {
            return Err(invalid(
                "steps_offset",
                format!("must be >= 0, got {}", self.steps_offset),
            ));
        }
        match (self.sampler.is_flow(), schedule) {
            (true, NoiseSchedule::Discrete(_)) => {
                Err(ScheduleError::SamplerMismatch { sampler: self.sampler.name(), needs: "flow" })
            }
            (false, NoiseSchedule::Flow(_)) => Err(ScheduleError::SamplerMismatch {
                sampler: self.sampler.name(),
                needs: "discrete",
            }),
            _ => Ok(()),
        }
    }
}

/// Where stochastic samplers draw their noise from.
pub trait NoiseSource {
    /// Standard normal noise with the shape and device of `like`, f32.
    fn next(&mut self, like: &Tensor) -> Result<Tensor>;
}

/// libtorch's global generator (seed it with `tch::manual_seed`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TorchNoise;

impl NoiseSource for TorchNoise {
    fn next(&mut self, like: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_randn(like.size(), (Kind::Float, like.device()))?)
    }
}

/// Replays given tensors in order (for reproducing a reference run exactly).
#[derive(Debug)]
pub struct FixedNoise {
    draws: std::collections::VecDeque<Tensor>,
}

impl FixedNoise {
    /// Replays `draws` in order; each must have the shape asked for.
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self { draws: draws.into() }
    }
}

impl NoiseSource for FixedNoise {
    fn next(&mut self, like: &Tensor) -> Result<Tensor> {
        let draw = self
            .draws
            .pop_front()
            .ok_or_else(|| ScheduleError::Compute("FixedNoise ran out of draws".to_string()))?;
        if draw.size() != like.size() {
            return Err(ScheduleError::Compute(format!(
                "FixedNoise draw has shape {:?}, expected {:?}",
                draw.size(),
                like.size()
            )));
        }
        Ok(draw.f_to_device(like.device())?.f_to_kind(Kind::Float)?)
    }
}

/// What a model called by a sampler may fail with (its own error, source chain kept).
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;

/// The model as samplers see it: `(x_t (B, ...), t (B,) f32 model time) -> prediction`.
/// Its error ends the sampling as [`crate::ScheduleError::Model`].
pub type Model<'a> = dyn FnMut(&Tensor, &Tensor) -> std::result::Result<Tensor, ModelError> + 'a;

/// Called after every step with the step index and the sampler's state (for Euler and Heun
/// the k-diffusion state `x / alpha`, as diffusers keeps it).
pub type OnStep<'a> = dyn FnMut(usize, &Tensor) + 'a;

/// A sampler bound to a schedule and a parameterisation, with its time grid computed.
pub struct Sampler<'s> {
    schedule: &'s NoiseSchedule,
    parameterization: Parameterization,
    config: SamplerConfig,
}

impl<'s> Sampler<'s> {
    /// Validates the combination (e.g. DDIM needs a discrete schedule; `flow` prediction a
    /// flow schedule).
    pub fn new(
        schedule: &'s NoiseSchedule,
        parameterization: Parameterization,
        config: &SamplerConfig,
    ) -> Result<Self> {
        config.validate(schedule)?;
        parameterization.check(schedule)?;
        Ok(Self { schedule, parameterization, config: config.clone() })
    }

    /// The model time of every model call, in order (Heun evaluates twice per step).
    pub fn timesteps(&self) -> Vec<f32> {
        let c = &self.config;
        let n = self.schedule.num_train_timesteps();
        match (self.schedule, c.sampler) {
            (NoiseSchedule::Discrete(_), SamplerKind::Ddpm | SamplerKind::Ddim) => {
                grid::ddpm_timesteps(n, c.steps, c.spacing(), c.steps_offset)
                    .iter()
                    .map(|&t| t as f32)
                    .collect()
            }
            (NoiseSchedule::Discrete(_), SamplerKind::DpmSolverPp2m) => {
                grid::dpm_timesteps(n, c.steps, c.spacing(), c.steps_offset)
                    .iter()
                    .map(|&t| t as f32)
                    .collect()
            }
            (NoiseSchedule::Discrete(_), SamplerKind::Euler | SamplerKind::Heun) => {
                let ts = grid::euler_timesteps(n, c.steps, c.spacing(), c.steps_offset);
                if c.sampler == SamplerKind::Heun {
                    let mut calls = vec![ts[0]];
                    ts[1..].iter().for_each(|&t| calls.extend([t, t]));
                    calls
                } else {
                    ts
                }
            }
            (NoiseSchedule::Flow(f), _) => {
                let sigmas = grid::flow_sigmas(n, c.steps, f.config().shift);
                let ts: Vec<f32> = sigmas[..c.steps].iter().map(|s| s * n as f32).collect();
                if c.sampler == SamplerKind::FlowHeun {
                    let mut calls = Vec::new();
                    for (i, &t) in ts.iter().enumerate() {
                        calls.push(t);
                        if sigmas[i + 1] > 0.0 {
                            calls.push(sigmas[i + 1] * n as f32);
                        }
                    }
                    calls
                } else {
                    ts
                }
            }
            _ => Vec::new(),
        }
    }

    /// Runs the sampler from standard-normal `noise (B, ...)` (scaled here as the scheduler
    /// requires) and returns the final sample, f32. `noise_source` feeds DDPM and DDIM with
    /// eta > 0.
    pub fn run(
        &self,
        noise: &Tensor,
        model: &mut Model<'_>,
        noise_source: &mut dyn NoiseSource,
        mut on_step: Option<&mut OnStep<'_>>,
    ) -> Result<Tensor> {
        let noise = noise.f_to_kind(Kind::Float)?;
        let mut report = |i: usize, x: &Tensor| {
            if let Some(f) = on_step.as_mut() {
                f(i, x);
            }
        };
        let c = &self.config;
        let p = self.parameterization;
        match self.schedule {
            NoiseSchedule::Discrete(d) => match c.sampler {
                SamplerKind::Ddpm => vp::ddpm(d, c, p, &noise, model, noise_source, &mut report),
                SamplerKind::Ddim => vp::ddim(d, c, p, &noise, model, noise_source, &mut report),
                SamplerKind::DpmSolverPp2m => vp::dpmpp_2m(d, c, p, &noise, model, &mut report),
                SamplerKind::Euler | SamplerKind::Heun => {
                    karras::run(d, c, p, &noise, model, &mut report)
                }
                _ => unreachable_kind(c.sampler),
            },
            NoiseSchedule::Flow(f) => flow::run(f, c, p, &noise, model, &mut report),
        }
    }
}

fn unreachable_kind(kind: SamplerKind) -> Result<Tensor> {
    Err(ScheduleError::SamplerMismatch { sampler: kind.name(), needs: "flow" })
}

/// Calls the model at one model time for the whole batch; returns its prediction with the
/// channels of `x` (the mean part of a learned-variance model's `2C` channels: samplers other
/// than DDPM ignore the variance, as diffusers' pipelines do).
pub(crate) fn call(model: &mut Model<'_>, x: &Tensor, t_model: f32) -> Result<Tensor> {
    Ok(call_with_variance(model, x, t_model)?.0)
}

/// [`call`] that also returns the variance values `v` `(B, C, ...)` of a model with a
/// learned variance (`2C` output channels), `None` for a `C`-channel model.
pub(crate) fn call_with_variance(
    model: &mut Model<'_>,
    x: &Tensor,
    t_model: f32,
) -> Result<(Tensor, Option<Tensor>)> {
    let t = Tensor::f_full([x.size()[0]], t_model as f64, (Kind::Float, x.device()))?;
    let out = model(x, &t).map_err(|e| ScheduleError::Model(e.into()))?;
    let channels = x.size().get(1).copied().unwrap_or(0);
    crate::learned_variance::split_prediction(&out.f_to_kind(Kind::Float)?, channels)
}

/// A noise level with the same alpha and sigma for the whole batch.
pub(crate) fn level(
    alpha: f64,
    sigma: f64,
    x: &Tensor,
    variance_preserving: bool,
) -> Result<NoiseLevel> {
    let b = [x.size()[0]];
    let opts = (Kind::Float, x.device());
    Ok(NoiseLevel {
        alpha: Tensor::f_full(b, alpha, opts)?,
        sigma: Tensor::f_full(b, sigma, opts)?,
        variance_preserving,
    })
}
