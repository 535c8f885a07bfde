//! AdamW (Loshchilov & Hutter) with its state as named tensors, so a checkpoint holds it and
//! a resumed run continues bit-identically. Decoupled weight decay applies to tensors of
//! rank >= 2 only (not to biases, norms' scales, or ... embeddings keep it: they are 2-D).
//! The update is libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`), gradient
//! clipping uses the multi-tensor norm: a handful of kernel launches per step on a GPU.

use std::collections::BTreeMap;

use lpl_torch_ext::multi_tensor::{self, AdamWStep};
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
    /// Updates applied, a 0-d f32 tensor on the parameters' device: a skipped step (see
    /// [`AdamW::step_unless`]) leaves it alone without the host having to look.
    state_step: Tensor,
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
        let device = params.first().map_or(tch::Device::Cpu, Tensor::device);
        let state_step = Tensor::zeros([], (Kind::Float, device));
        Ok(Self { config, m: zeros(&params), v: zeros(&params), names, params, state_step })
    }

    /// Updates applied so far (reads the device counter: a host synchronisation).
    pub fn step_count(&self) -> i64 {
        self.state_step.double_value(&[]) as i64
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)`, capped at 1);
    /// returns the norm before clipping as a 0-d tensor (no host synchronisation).
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<Tensor> {
        let total = self.grad_norm()?;
        self.clip_to(&total, max_norm)?;
        Ok(total)
    }

    /// The L2 norm of all gradients together, a 0-d f32 tensor on the device (no host
    /// read): non-finite when any gradient is, which is how a step is found to be bad.
    pub fn grad_norm(&self) -> Result<Tensor> {
        Ok(multi_tensor::total_norm(&self.grads())?)
    }

    /// Scales every gradient by `min(1, max_norm / (total + 1e-6))`, `total` being
    /// [`Self::grad_norm`] (`clip_grad_norm_`'s formula).
    pub fn clip_to(&self, total: &Tensor, max_norm: f64) -> Result<()> {
        let scale = tch::no_grad(|| ((total + 1e-6).reciprocal() * max_norm).clamp_max(1.0));
        multi_tensor::mul_(&self.grads(), &scale)?;
        Ok(())
    }

    /// The defined gradients, in parameter order (shallow handles: writes reach them).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::grad).filter(Tensor::defined).collect()
    }

    /// One update with learning rate `lr`: `torch.optim.AdamW(fused=True)` (one multi-tensor
    /// kernel per group on CUDA), weight decay on tensors of rank >= 2 only. Variables without
    /// a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.update(lr, None)
    }

    /// [`Self::step`] unless `found_inf` (a 0-d f32 tensor on the device, 1 or 0) is 1: then
    /// parameters, moments and the update count stay as they are. Decided on the device, as
    /// PyTorch's GradScaler does, so a training loop need not read its loss on the host to
    /// skip a non-finite step.
    pub fn step_unless(&mut self, lr: f64, found_inf: &Tensor) -> Result<()> {
        self.update(lr, Some(found_inf))
    }

    fn update(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<()> {
        tch::no_grad(|| match found_inf {
            Some(skip) => self.state_step += 1.0 - skip,
            None => self.state_step += 1.0,
        });
        let c = &self.config;
        // (decayed, not decayed) groups of (param, grad, m, v)
        let mut groups: [[Vec<Tensor>; 4]; 2] = Default::default();
        for ((p, m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let group = &mut groups[usize::from(!(c.weight_decay > 0.0 && p.dim() >= 2))];
            for (list, t) in group.iter_mut().zip([p, &g, m, v]) {
                list.push(t.shallow_clone());
            }
        }
        for (i, [p, g, m, v]) in groups.iter().enumerate() {
            let h = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: if i == 0 { c.weight_decay } else { 0.0 },
                eps: c.eps,
            };
            multi_tensor::fused_adamw(p, g, m, v, h, &self.state_step, found_inf)?;
        }
        Ok(())
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
        let _ = tch::no_grad(|| self.state_step.fill_(step as f64));
        Ok(())
    }
}
