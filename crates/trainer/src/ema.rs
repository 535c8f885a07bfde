//! Exponential moving average of a model's weights, kept on its device.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

use crate::error::{Result, invalid};

/// EMA settings. A field left out of `[ema]` takes its value from [`Default`], as does a
/// left-out `[ema]`: decay 0.999 with warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Target decay.
    pub decay: f64,
    /// Warm-up: the decay used at step s is `min(decay, (1 + s) / (10 + s))`.
    pub warmup: bool,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.999, warmup: true }
    }
}

/// Shadow copies of every variable of a model.
#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts from the model's current weights.
    pub fn new(vs: &VarStore, config: EmaConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&config.decay) {
            return Err(invalid("ema.decay", format!("must be in [0, 1), got {}", config.decay)));
        }
        let mut shadow: Vec<(String, Tensor)> =
            vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { config, shadow })
    }

    /// The decay used after `step` updates.
    pub fn decay_at(&self, step: usize) -> f64 {
        if self.config.warmup {
            self.config.decay.min((1.0 + step as f64) / (10.0 + step as f64))
        } else {
            self.config.decay
        }
    }

    /// `shadow = d * shadow + (1 - d) * weights` for the decay at `step`.
    pub fn update(&mut self, vs: &VarStore, step: usize) -> Result<()> {
        let never = Tensor::zeros([], (tch::Kind::Float, self.device()));
        self.update_unless(vs, step, &never)
    }

    /// [`Self::update`] unless `found_inf` (a 0-d f32 tensor on the device, 1 or 0) is 1: the
    /// weight `1 - d` is multiplied by `1 - found_inf` on the device (no host read), in one
    /// multi-tensor update over the whole model.
    pub fn update_unless(&mut self, vs: &VarStore, step: usize, found_inf: &Tensor) -> Result<()> {
        let d = self.decay_at(step);
        let (shadows, params) = self.pairs(vs);
        let weight = tch::no_grad(|| (1.0 - found_inf) * (1.0 - d));
        lpl_torch_ext::multi_tensor::lerp_by_tensor_(&shadows, &params, &weight)?;
        Ok(())
    }

    /// The device of the shadow weights.
    fn device(&self) -> tch::Device {
        self.shadow.first().map_or(tch::Device::Cpu, |(_, t)| t.device())
    }

    /// (shadow, current weight) pairs, the weight cast to the shadow's dtype.
    fn pairs(&self, vs: &VarStore) -> (Vec<Tensor>, Vec<Tensor>) {
        let vars = vs.variables();
        let (mut shadows, mut params) = (Vec::new(), Vec::new());
        for (name, s) in &self.shadow {
            if let Some(p) = vars.get(name) {
                shadows.push(s.shallow_clone());
                params.push(if p.kind() == s.kind() {
                    p.shallow_clone()
                } else {
                    p.to_kind(s.kind())
                });
            }
        }
        (shadows, params)
    }

    /// The shadow weights by name (`ema.<var>` in checkpoints).
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Restores the shadow weights from `tensors` keyed `<prefix><var>`.
    pub fn load(&mut self, tensors: &BTreeMap<String, Tensor>, prefix: &str) -> Result<()> {
        tch::no_grad(|| {
            for (name, s) in &mut self.shadow {
                let key = format!("{prefix}{name}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| invalid("checkpoint", format!("missing EMA weight `{key}`")))?;
                s.copy_(&src.to_kind(s.kind()).to_device(s.device()));
            }
            Ok(())
        })
    }

    /// Copies the shadow weights into `vs` (for sampling from the EMA model).
    pub fn copy_to(&self, vs: &VarStore) {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, s) in &self.shadow {
                if let Some(p) = vars.get(name) {
                    p.shallow_clone().copy_(s);
                }
            }
        });
    }
}
