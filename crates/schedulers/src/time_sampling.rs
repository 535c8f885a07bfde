//! Training-time t sampling: which noise level each sample of a batch is trained at.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, invalid};
use crate::rng::Rng;
use crate::schedule::NoiseSchedule;

/// The distribution of training t.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeSampling {
    /// Discrete schedules: an integer index uniform in `[0, N)`. Flow: `t = k / N` for k
    /// uniform in `[1, N]`.
    #[default]
    UniformDiscrete,
    /// u uniform in `(0, 1)`. Discrete schedules: `t = u (N - 1)` (continuous position);
    /// flow: `t = shift(u)`.
    UniformContinuous,
    /// `u = sigmoid(mean + std n)`, n standard normal (SD3's logit-normal); mapped as
    /// `UniformContinuous` maps u.
    LogitNormal {
        /// Mean of the normal before the sigmoid.
        mean: f64,
        /// Standard deviation of the normal before the sigmoid.
        std: f64,
    },
}

impl TimeSampling {
    /// Checks the parameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if let Self::LogitNormal { mean, std } = self {
            if !mean.is_finite() {
                return Err(invalid("mean", format!("must be finite, got {mean}")));
            }
            if !(std.is_finite() && *std > 0.0) {
                return Err(invalid("std", format!("must be positive, got {std}")));
            }
        }
        Ok(())
    }
}

/// Draws training t for a batch, reproducibly from a seed; its state is one `u64`.
#[derive(Debug, Clone)]
pub struct TimeSampler {
    kind: TimeSampling,
    rng: Rng,
}

impl TimeSampler {
    /// A sampler drawing from `kind`, seeded.
    pub fn new(kind: TimeSampling, seed: u64) -> Result<Self> {
        kind.validate()?;
        Ok(Self { kind, rng: Rng::new(seed) })
    }

    /// The generator state, to save in a checkpoint.
    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    /// Continues from a saved state.
    pub fn with_state(kind: TimeSampling, state: u64) -> Result<Self> {
        Self::new(kind, state)
    }

    /// t for `batch` samples on `device`: `(B,)`, Int64 for `UniformDiscrete` on a discrete
    /// schedule, f32 otherwise. Values are drawn on the host and copied once.
    pub fn sample(
        &mut self,
        schedule: &NoiseSchedule,
        batch: usize,
        device: Device,
    ) -> Result<Tensor> {
        let n = schedule.num_train_timesteps();
        let t = match (schedule, &self.kind) {
            (NoiseSchedule::Discrete(_), TimeSampling::UniformDiscrete) => {
                let idx: Vec<i64> = (0..batch).map(|_| self.rng.below(n as u64) as i64).collect();
                return Ok(Tensor::from_slice(&idx).f_to_device(device)?);
            }
            (NoiseSchedule::Flow(_), TimeSampling::UniformDiscrete) => (0..batch)
                .map(|_| (self.rng.below(n as u64) + 1) as f64 / n as f64)
                .collect::<Vec<_>>(),
            (_, kind) => {
                let u: Vec<f64> = (0..batch)
                    .map(|_| match kind {
                        TimeSampling::LogitNormal { mean, std } => {
                            let x = mean + std * self.rng.normal();
                            1.0 / (1.0 + (-x).exp())
                        }
                        _ => self.rng.uniform_open(),
                    })
                    .collect();
                match schedule {
                    NoiseSchedule::Discrete(_) => u.iter().map(|u| u * (n - 1) as f64).collect(),
                    NoiseSchedule::Flow(f) => u.iter().map(|&u| f.shift_time(u)).collect(),
                }
            }
        };
        let t: Vec<f32> = t.into_iter().map(|v| v as f32).collect();
        Ok(Tensor::from_slice(&t).f_to_kind(Kind::Float)?.f_to_device(device)?)
    }
}
