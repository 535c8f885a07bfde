//! # lpl-schedulers
//!
//! The mathematics shared by training, the LPL gate and sampling: discrete variance-preserving
//! noise schedules (linear, scaled-linear, cosine, zero-terminal-SNR rescale) and rectified
//! flow with time shift; the parameterisations eps, v, x0 and flow velocity with exact
//! conversions to x0 and to the training target; seeded training-time t sampling; samplers
//! (DDPM, DDIM, Euler, Heun, DPM-Solver++(2M), flow Euler/Heun) as functions over a time grid
//! matching diffusers' schedulers; and classifier-free guidance as a wrapper around any model.
//!
//! Every quantity is per sample: a batch carries one t per sample, shape `(B,)`. Depends on
//! nothing else of lpl.
//!
//! ```
//! use lpl_schedulers::{NoiseSchedule, Parameterization, Sampler, SamplerConfig, SamplerKind, TorchNoise};
//! use tch::{Device, Kind, Tensor};
//!
//! // Training: noise a batch at random timesteps and build the v-prediction target.
//! let schedule = NoiseSchedule::preset("sd15")?;
//! let z0 = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let eps = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let t = Tensor::from_slice(&[10i64, 900]);
//! let z_t = schedule.add_noise(&z0, &eps, &t)?;
//! let v = Parameterization::V.target(&schedule, &z0, &eps, &t)?;
//! // The exact target converts back to the clean latent.
//! let x0 = Parameterization::V.to_x0(&schedule, &v, &z_t, &t)?;
//! assert!(f64::try_from((x0 - &z0).abs().max())? < 1e-4);
//!
//! // Sampling: DDIM, 20 steps, with a model that always predicts zero noise (a model may
//! // fail: it returns a Result, and its error ends the sampling).
//! let config = SamplerConfig::new(SamplerKind::Ddim, 20);
//! let sampler = Sampler::new(&schedule, Parameterization::Eps, &config)?;
//! let mut model = |x: &Tensor, _t: &Tensor| -> Result<Tensor, lpl_schedulers::ModelError> {
//!     Ok(x.zeros_like())
//! };
//! let noise = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
//! let sample = sampler.run(&noise, &mut model, &mut TorchNoise, None)?;
//! assert_eq!(sample.size(), vec![2, 4, 8, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod error;
pub mod guidance;
pub mod learned_variance;
pub mod parameterization;
pub mod rng;
pub mod sampling;
pub mod schedule;
pub mod time_sampling;
pub mod weighting;

pub use error::{Result, ScheduleError};
pub use guidance::{Branch, Guidance};
pub use learned_variance::VarianceTables;
pub use parameterization::{NoiseLevel, Parameterization};
pub use rng::Rng;
pub use sampling::{
    FixedNoise, ModelError, NoiseSource, PreviousTimestep, Sampler, SamplerConfig, SamplerKind,
    TimestepSpacing, TorchNoise,
};
pub use schedule::{
    BetaSchedule, DiscreteConfig, DiscreteSchedule, FlowConfig, FlowSchedule, NoiseSchedule,
    ScheduleConfig,
};
pub use time_sampling::{TimeSampler, TimeSampling};
pub use weighting::{min_snr_weights, snr_gate, timestep_gate};
