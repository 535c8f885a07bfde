//! AdamW (Loshchilov & Hutter) with its state as named tensors, so a checkpoint holds it and
//! a resumed run continues bit-identically. Decoupled weight decay applies to tensors of
//! rank >= 2 only (not to biases, norms' scales, or ... embeddings keep it: they are 2-D).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError, invalid};

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay.
    #[serde(default = "beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "eps")]
    pub eps: f64,
    /// Decoupled weight decay (tensors of rank >= 2).
    #[serde(default)]
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: beta1(), beta2: beta2(), eps: eps(), weight_decay: 0.0 }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("must be in [0, 1), got {v}")));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(invalid("optim.eps", "must be positive"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(invalid("optim.weight_decay", "must be >= 0"));
        }
        Ok(())
    }
}

/// AdamW over the trainable variables of a `VarStore`, in name order.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl AdamW {
    /// Zero moments for every trainable variable of `vs`.
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let mut named: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let zeros = |ps: &[Tensor]| {
            ps.iter().map(|p| p.zeros_like().to_kind(Kind::Float)).collect::<Vec<_>>()
        };
        Ok(Self { config, m: zeros(&params), v: zeros(&params), names, params, step: 0 })
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping as a 0-d tensor (no host synchronisation).
    pub fn clip_grad_norm(&self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            let grads: Vec<Tensor> =
                self.params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
            if grads.is_empty() {
                return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
            }
            let norms: Vec<Tensor> =
                grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
            let total = Tensor::stack(&norms, 0).sum(Kind::Float).sqrt();
            let scale = (total.reciprocal() * max_norm).clamp_max(1.0);
            for g in &grads {
                let mut g = g.shallow_clone();
                g *= scale.to_kind(g.kind());
            }
            total
        })
    }

    /// One update with learning rate `lr` (variables without gradient are skipped).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                *m *= c.beta1;
                *m += &g * (1.0 - c.beta1);
                *v *= c.beta2;
                *v += g.square() * (1.0 - c.beta2);
                let update = (&*m / bc1) / ((&*v / bc2).sqrt() + c.eps);
                let mut p = p.shallow_clone();
                if c.weight_decay > 0.0 && p.dim() >= 2 {
                    p *= 1.0 - lr * c.weight_decay;
                }
                p -= (update * lr).to_kind(p.kind());
            }
        });
    }

    /// The state as named tensors (`adamw.m.<var>`, `adamw.v.<var>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for ((name, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("adamw.m.{name}"), m.shallow_clone()));
            out.push((format!("adamw.v.{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restores the moments from `tensors` (as written by [`Self::state_tensors`]) and the
    /// update count; every variable's moments must be present with its shape.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: i64) -> Result<()> {
        tch::no_grad(|| {
            for ((name, m), v) in self.names.iter().zip(&mut self.m).zip(&mut self.v) {
                for (prefix, dst) in [("adamw.m.", &mut *m), ("adamw.v.", &mut *v)] {
                    let key = format!("{prefix}{name}");
                    let src = tensors.get(&key).ok_or_else(|| {
                        invalid("checkpoint", format!("missing optimiser state `{key}`"))
                    })?;
                    if src.size() != dst.size() {
                        return Err(TrainError::InvalidConfig {
                            field: "checkpoint",
                            reason: format!(
                                "`{key}` has shape {:?}, expected {:?}",
                                src.size(),
                                dst.size()
                            ),
                        });
                    }
                    dst.copy_(&src.to_kind(Kind::Float).to_device(dst.device()));
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}
