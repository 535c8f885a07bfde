//! Multi-tensor operations over whole parameter lists (libtorch's `_foreach_*` and fused
//! AdamW kernels): one or a few kernel launches per list instead of several per tensor, which
//! is what makes an optimiser step cheap on a GPU. All run without recording gradients.

use tch::{Kind, Tensor};

use crate::{Result, TorchExtError, ffi};

fn same_len(call: &'static str, lens: &[usize]) -> Result<()> {
    if lens.windows(2).all(|w| w[0] == w[1]) {
        Ok(())
    } else {
        Err(TorchExtError { call, message: format!("tensor lists of different lengths {lens:?}") })
    }
}

/// AdamW hyper-parameters for [`fused_adamw`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this update.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Decoupled weight decay (0 for a group without decay).
    pub weight_decay: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

/// `torch.optim.AdamW(fused=True)`'s update of one parameter group in place: parameters,
/// their gradients and both moments (all f32, one device, matching shapes). `step` is the
/// update count including this one (bias correction), a 0-d f32 tensor on the device;
/// `found_inf`, a 0-d f32 tensor there, skips the whole update when it holds 1 (GradScaler's
/// mechanism: no host synchronisation).
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    h: AdamWStep,
    step: &Tensor,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    same_len("fused_adamw", &[params.len(), grads.len(), exp_avgs.len(), exp_avg_sqs.len()])?;
    ffi::fused_adamw(params, grads, exp_avgs, exp_avg_sqs, h, step, found_inf)
}

/// `targets[i] += weight * (ends[i] - targets[i])` with the weight a 0-d tensor on the device
/// (an EMA update with `weight = (1 - decay) * finite`: a skipped step leaves the targets
/// unchanged without a host synchronisation).
pub fn lerp_by_tensor_(targets: &[Tensor], ends: &[Tensor], weight: &Tensor) -> Result<()> {
    same_len("foreach_lerp_tensor", &[targets.len(), ends.len()])?;
    ffi::foreach_lerp_tensor(targets, ends, weight)
}

/// The L2 norm of all `tensors` together as a 0-d f32 tensor on their device (no host
/// synchronisation); 0 for an empty list (on the CPU).
pub fn total_norm(tensors: &[Tensor]) -> Result<Tensor> {
    let device = tensors.first().map_or(tch::Device::Cpu, Tensor::device);
    let out = Tensor::zeros([], (Kind::Float, device));
    ffi::foreach_total_norm(tensors, &out)?;
    Ok(out)
}

/// `tensors[i] *= scale` for a 0-d `scale` on their device.
pub fn mul_(tensors: &[Tensor], scale: &Tensor) -> Result<()> {
    ffi::foreach_mul(tensors, scale)
}
