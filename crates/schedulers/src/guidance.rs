//! Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any model.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Result, invalid};
use crate::sampling::ModelError;

fn default_scale() -> f64 {
    1.0
}

/// `uncond + scale * (cond - uncond)` on every channel, optionally only for model times in
/// an interval (Kynkaanniemi et al. 2024, "guidance in a limited interval"); outside it the
/// conditional prediction is used alone and the unconditional pass is skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guidance {
    /// 1 disables guidance (no unconditional pass).
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// `[lo, hi]` in model time (train timesteps, or `t * N` for flow); guidance applies
    /// where `lo <= t <= hi`.
    #[serde(default)]
    pub interval: Option<[f64; 2]>,
    /// Guide only the first `k` channels of the prediction and take the others from the
    /// conditional prediction, as the original DiT's `forward_with_cfg` does (`k = 3` for its
    /// 4-channel latents, the learned variance included in the unguided rest): to match its
    /// published FIDs. `None` (the default): every channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<i64>,
}

impl Default for Guidance {
    fn default() -> Self {
        Self { scale: default_scale(), interval: None, channels: None }
    }
}

impl Guidance {
    /// Guidance with `scale` at every time.
    pub fn new(scale: f64) -> Self {
        Self { scale, interval: None, channels: None }
    }

    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(invalid("scale", format!("must be finite, got {}", self.scale)));
        }
        if let Some([lo, hi]) = self.interval
            && !(lo.is_finite() && hi.is_finite() && lo <= hi)
        {
            return Err(invalid(
                "interval",
                format!("must be [lo, hi] with lo <= hi, got [{lo}, {hi}]"),
            ));
        }
        if let Some(k) = self.channels
            && k < 1
        {
            return Err(invalid("channels", format!("must be >= 1, got {k}")));
        }
        Ok(())
    }

    /// Whether guidance applies at model time `t`.
    pub fn active_at(&self, t: f64) -> bool {
        self.scale != 1.0 && self.interval.is_none_or(|[lo, hi]| lo <= t && t <= hi)
    }

    /// `uncond + scale * (cond - uncond)`, `(B, C, ...)`: on every channel, or on the first
    /// [`Guidance::channels`] with the rest taken from `cond`.
    pub fn combine(&self, cond: &Tensor, uncond: &Tensor) -> Tensor {
        let c = cond.size().get(1).copied().unwrap_or(0);
        self.combine_first(cond, uncond, self.channels.unwrap_or(c))
    }

    /// [`Self::combine`] guiding at most the first `k` channels.
    fn combine_first(&self, cond: &Tensor, uncond: &Tensor, k: i64) -> Tensor {
        let c = cond.size().get(1).copied().unwrap_or(0);
        if k < c {
            let guided =
                cond.narrow(1, 0, k) * self.scale + uncond.narrow(1, 0, k) * (1.0 - self.scale);
            Tensor::cat(&[guided, cond.narrow(1, k, c - k)], 1)
        } else {
            uncond + (cond - uncond) * self.scale
        }
    }

    /// Wraps `model(x, t, branch)` into a sampler model, guiding the channels of `x` (of a
    /// learned-variance model's `2C`, the prediction; the variance is the conditional
    /// branch's). Where guidance applies, the model gets one batch of 2B
    /// ([`Branch::Both`]: the inputs twice, rows `[0, B)` to be conditioned, rows `[B, 2B)`
    /// unconditional, e.g. null class labels), as diffusers' pipelines batch it; elsewhere B
    /// rows, [`Branch::Conditional`]. Reads the model time of the first sample to decide the
    /// interval (one host read per call, sampling only).
    pub fn wrap<'a, F>(
        &'a self,
        mut model: F,
    ) -> impl FnMut(&Tensor, &Tensor) -> std::result::Result<Tensor, ModelError> + 'a
    where
        F: FnMut(&Tensor, &Tensor, Branch) -> std::result::Result<Tensor, ModelError> + 'a,
    {
        move |x: &Tensor, t: &Tensor| {
            let t0 = if self.interval.is_some() { t.f_double_value(&[0])? } else { 0.0 };
            if !self.active_at(t0) {
                return model(x, t, Branch::Conditional);
            }
            let (b, c) = (x.size()[0], x.size().get(1).copied().unwrap_or(0));
            let both =
                model(&Tensor::f_cat(&[x, x], 0)?, &Tensor::f_cat(&[t, t], 0)?, Branch::Both)?;
            // the prediction's own channels only: a learned variance (channels past x's)
            // comes from the conditional branch, as in DiT's forward_with_cfg
            let k = self.channels.map_or(c, |k| k.min(c));
            Ok(self.combine_first(&both.f_narrow(0, 0, b)?, &both.f_narrow(0, b, b)?, k))
        }
    }
}

/// Which predictions one model call under [`Guidance::wrap`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// Every row conditional (B rows).
    Conditional,
    /// 2B rows: the first B conditional, the last B the same inputs unconditional.
    Both,
}
