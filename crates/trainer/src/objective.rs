//! What the diffusion loop minimises: an [`Objective`] maps one micro-batch (the denoiser's
//! prediction and what it was made from) to a loss and its named terms. The loop neither
//! knows nor branches on which objective it runs: [`Mse`], [`MseLpl`] (the paper's
//! MSE + LPL) and [`MsePixel`] (the pixel-space decode loss baseline) ship here; a user's
//! own implements the trait and is passed to
//! [`train_with_objective`](crate::diffusion_training::train_with_objective).

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_loss::{LatentPerceptualLoss, x0_from_prediction};
use lpl_schedulers::learned_variance::split_prediction;
use lpl_schedulers::{NoiseSchedule, Parameterization, VarianceTables, min_snr_weights};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, invalid};
use crate::run_config::{LossConfig, PrecisionConfig};

/// One micro-batch as an objective sees it; every tensor on the training device but `t_cpu`.
#[derive(Clone, Copy)]
pub struct MicroBatch<'a> {
    /// The denoiser's prediction `(B, C, h, w)`, f32 (cast back from autocast).
    pub pred: &'a Tensor,
    /// The clean latents `(B, C, h, w)` (model space).
    pub z0: &'a Tensor,
    /// The noise `(B, C, h, w)`.
    pub eps: &'a Tensor,
    /// The noisy latents `(B, C, h, w)`.
    pub z_t: &'a Tensor,
    /// The noise levels `(B,)` (schedule time).
    pub t: &'a Tensor,
    /// The same `t` on the CPU (for host-side decisions such as LPL's SNR gate).
    pub t_cpu: &'a Tensor,
    /// The schedule.
    pub schedule: &'a NoiseSchedule,
    /// What the denoiser predicts.
    pub parameterization: Parameterization,
    /// The optimiser step this micro-batch belongs to (0-based).
    pub step: usize,
    /// The training device.
    pub device: Device,
    /// Whether the forward pass ran under bf16 autocast (the call is still inside it).
    pub autocast: bool,
    /// This micro-batch's place in the global batch when the batch is split over ranks.
    pub share: Share<'a>,
}

/// A micro-batch's share of a global batch split over `world` ranks (data-parallel
/// training): the gradients of the ranks are averaged, so a mean over this rank's samples is
/// right as it is, but a mean over the samples a gate keeps must become this rank's part of
/// the mean over the *global* batch's kept samples, whatever the split.
#[derive(Clone, Copy)]
pub struct Share<'a> {
    /// The noise levels of the whole global micro-batch `(world * B,)` on the CPU (every
    /// rank draws them all and keeps its rows).
    pub t_cpu_global: &'a Tensor,
    /// Number of ranks.
    pub world: usize,
}

impl<'a> Share<'a> {
    /// One process: the micro-batch is the global batch.
    pub fn whole(t_cpu: &'a Tensor) -> Self {
        Self { t_cpu_global: t_cpu, world: 1 }
    }

    /// The factor that turns a mean over the `local` samples kept here into this rank's
    /// part of the mean over the `global` samples kept in the global batch:
    /// `local * world / global` (the ranks' average of the scaled means is then the global
    /// mean), 1 in one process, 0 when nothing is kept.
    pub fn kept_mean_scale(&self, local: usize, global: usize) -> f64 {
        if self.world == 1 {
            1.0
        } else if global == 0 {
            0.0
        } else {
            (local * self.world) as f64 / global as f64
        }
    }
}

/// A loss and the named terms to log: each term is 0-d or `(L,)` f32, detached; a term
/// absent at a step (e.g. LPL before its start step) is averaged over the steps that have it.
pub struct Loss {
    /// The loss, 0-d f32: what is logged and checked for finiteness, and what is
    /// differentiated unless `backward` is given.
    pub total: Tensor,
    /// `(name, value)` as written to `metrics.jsonl`.
    pub terms: Vec<(&'static str, Tensor)>,
    /// A scalar with the same gradient as `total` to differentiate instead (an objective
    /// that computed part of its gradient itself, chunk by chunk, hands it on this way).
    pub backward: Option<Tensor>,
}

impl Loss {
    /// A loss differentiated as it is.
    pub fn new(total: Tensor, terms: Vec<(&'static str, Tensor)>) -> Self {
        Self { total, terms, backward: None }
    }
}

/// What the training loop minimises.
pub trait Objective {
    /// The loss of one micro-batch.
    fn loss(&self, batch: &MicroBatch<'_>) -> Result<Loss>;
}

/// Mean squared error on the parameterisation's target, optionally min-SNR-gamma weighted
/// (logged as `mse`).
#[derive(Debug, Clone, Default)]
pub struct Mse {
    /// Min-SNR-gamma weighting (Hang et al. 2023).
    pub min_snr_gamma: Option<f64>,
}

impl Mse {
    /// The weighted MSE, 0-d f32.
    pub fn value(&self, b: &MicroBatch<'_>) -> Result<Tensor> {
        let target = b.parameterization.target(b.schedule, b.z0, b.eps, b.t)?;
        let mut per_sample =
            (b.pred - target).square().flatten(1, -1).mean_dim(1, false, Kind::Float);
        if let Some(gamma) = self.min_snr_gamma {
            per_sample *= min_snr_weights(b.schedule, b.parameterization, b.t, gamma)?;
        }
        Ok(per_sample.mean(Kind::Float))
    }
}

impl Objective for Mse {
    fn loss(&self, b: &MicroBatch<'_>) -> Result<Loss> {
        let mse = self.value(b)?;
        Ok(Loss::new(mse.shallow_clone(), vec![("mse", mse.detach())]))
    }
}

/// MSE plus the latent perceptual loss (shared/LPL.md) once it is active; logs `mse`, and
/// while active `lpl` (the weighted term), `lpl_kept_fraction` and `lpl_masked_fraction`.
pub struct MseLpl<'a> {
    /// The MSE part.
    pub mse: Mse,
    /// The LPL over the frozen decoder.
    pub lpl: LatentPerceptualLoss<'a>,
    /// Run the decoder branch under the loop's autocast too (else in f32).
    pub decoder_autocast: bool,
}

impl Objective for MseLpl<'_> {
    fn loss(&self, b: &MicroBatch<'_>) -> Result<Loss> {
        let mse = self.mse.value(b)?;
        let mut terms = vec![("mse", mse.detach())];
        if !self.lpl.active_at(b.step) {
            return Ok(Loss::new(mse, terms));
        }
        let x0_hat = x0_from_prediction(b.pred, b.z_t, b.t, b.parameterization, b.schedule)?;
        let _f32 = (b.autocast && !self.decoder_autocast)
            .then(|| lpl_torch_ext::Autocast::disable(b.device))
            .transpose()?;
        let (schedule, param) = (b.schedule, b.parameterization);
        // over the global batch's kept samples when it is split over ranks
        // this rank's weight in means over the global batch's kept samples (1 in one process)
        let kept_scale = if b.share.world > 1 {
            b.share.kept_mean_scale(
                self.lpl.kept_indices(b.t_cpu, schedule)?.len(),
                self.lpl.kept_indices(b.share.t_cpu_global, schedule)?.len(),
            )
        } else {
            1.0
        };
        let scale = match self.lpl.config().batch_reduce {
            lpl_loss::BatchReduce::Kept => kept_scale,
            lpl_loss::BatchReduce::Batch => 1.0,
        };
        let (mut out, backward) = match self.lpl.config().chunk {
            // the decoder's graph chunk by chunk, its gradient sent on through x0_hat
            Some(chunk) => {
                let (out, grad) =
                    self.lpl.value_and_grad(&x0_hat, b.z0, b.t_cpu, schedule, param, chunk)?;
                let surrogate = (&x0_hat * grad).sum(Kind::Float);
                let surrogate = if scale == 1.0 { surrogate } else { surrogate * scale };
                (out, Some(&mse + surrogate))
            }
            None => (self.lpl.loss(&x0_hat, b.z0, b.t_cpu, schedule, param)?, None),
        };
        if scale != 1.0 {
            out.total *= scale;
        }
        terms.extend([
            ("lpl", out.total.detach()),
            ("lpl_kept_fraction", out.kept_fraction.detach()),
            // a fraction over kept samples: the ranks' average is the global one once weighted
            (
                "lpl_masked_fraction",
                if kept_scale == 1.0 {
                    out.masked_fraction.detach()
                } else {
                    out.masked_fraction.detach() * kept_scale
                },
            ),
        ]);
        Ok(Loss { total: &mse + &out.total, terms, backward })
    }
}

/// MSE plus `weight` times the MSE between the decodes of the predicted and the true clean
/// latents (`lpl_loss::pixel_loss`): the pixel-space baseline of the paper's ablations,
/// optionally on the samples inside a gate only (the mean over them). Logs `mse` and
/// `pixel` (the weighted term).
pub struct MsePixel<'a> {
    /// The MSE part.
    pub mse: Mse,
    /// The frozen autoencoder.
    pub ae: &'a dyn Autoencoder,
    /// Its latent constants.
    pub codec: LatentCodec,
    /// Weight of the pixel term.
    pub weight: f64,
    /// The samples it applies to (`None`: all).
    pub gate: Option<lpl_loss::LplGate>,
}

impl MsePixel<'_> {
    /// Indices of the samples of noise levels `t_cpu` inside the gate (all without one).
    fn kept(&self, t_cpu: &Tensor, schedule: &NoiseSchedule) -> Result<Vec<i64>> {
        let n = t_cpu.size()[0];
        let keep = match self.gate {
            None | Some(lpl_loss::LplGate::All) => return Ok((0..n).collect()),
            Some(lpl_loss::LplGate::Snr { tau }) => lpl_schedulers::snr_gate(schedule, t_cpu, tau)?,
            Some(lpl_loss::LplGate::Timestep { max }) => {
                lpl_schedulers::timestep_gate(schedule, t_cpu, max)?
            }
        };
        let keep = Vec::<bool>::try_from(keep)?;
        Ok(keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as i64).collect())
    }
}

impl Objective for MsePixel<'_> {
    fn loss(&self, b: &MicroBatch<'_>) -> Result<Loss> {
        let mse = self.mse.value(b)?;
        let x0_hat = x0_from_prediction(b.pred, b.z_t, b.t, b.parameterization, b.schedule)?;
        let kept = self.kept(b.t_cpu, b.schedule)?;
        let pixel = if kept.is_empty() {
            Tensor::zeros([], (Kind::Float, b.device))
        } else {
            let idx = Tensor::from_slice(&kept).to_device(b.device);
            let (x, z) = (x0_hat.index_select(0, &idx), b.z0.index_select(0, &idx));
            // over the global batch's kept samples when it is split over ranks
            let scale = if b.share.world > 1 {
                let global = self.kept(b.share.t_cpu_global, b.schedule)?.len();
                b.share.kept_mean_scale(kept.len(), global)
            } else {
                1.0
            };
            lpl_loss::pixel_loss(self.ae, &self.codec, &x, &z)? * (self.weight * scale)
        };
        let terms = vec![("mse", mse.detach()), ("pixel", pixel.detach())];
        Ok(Loss::new(mse + pixel, terms))
    }
}

/// An objective for a denoiser with a learned variance (`2C` output channels), as DiT trains
/// it (improved DDPM's hybrid loss): `inner` sees the mean part (its MSE, LPL, ... on the
/// first C channels) and the variational bound term of the variance part is added, with the
/// mean frozen (detached) in it, so the bound trains the variance alone. Logs `vb` (bits
/// per dimension, the mean over the batch) besides `inner`'s terms.
pub struct LearnedVariance<'a> {
    /// The objective of the mean part.
    pub inner: Box<dyn Objective + 'a>,
    /// The schedule's variance tables.
    pub tables: VarianceTables,
}

impl<'a> LearnedVariance<'a> {
    /// Wraps `inner` for `schedule` (a discrete one: the bound is defined on the discrete
    /// chain only) on `device`.
    pub fn new(
        inner: Box<dyn Objective + 'a>,
        schedule: &NoiseSchedule,
        device: Device,
    ) -> Result<Self> {
        let NoiseSchedule::Discrete(d) = schedule else {
            return Err(invalid(
                "model",
                "a learned variance (2C output channels) needs a discrete schedule: the \
                 variational bound is defined on the discrete chain",
            ));
        };
        Ok(Self { inner, tables: VarianceTables::new(d, device)? })
    }
}

impl Objective for LearnedVariance<'_> {
    fn loss(&self, b: &MicroBatch<'_>) -> Result<Loss> {
        let (mean, v) = split_prediction(b.pred, b.z0.size()[1])?;
        let v = v.ok_or_else(|| invalid("model", "the prediction has no variance channels"))?;
        let mut out = self.inner.loss(&MicroBatch { pred: &mean, ..*b })?;
        let x0_hat =
            x0_from_prediction(&mean.detach(), b.z_t, b.t, b.parameterization, b.schedule)?;
        let vb = self.tables.vlb_bits_per_dim(b.z0, b.z_t, b.t, &x0_hat, &v)?.mean(Kind::Float);
        out.total = &out.total + &vb;
        out.backward = out.backward.map(|g| g + &vb);
        out.terms.push(("vb", vb.detach()));
        Ok(out)
    }
}

/// The objective a run config asks for (`[loss]`): MSE, MSE + LPL (`[loss.lpl]`) or
/// MSE + pixel (`[loss.pixel]`).
pub fn from_config<'a>(
    loss: &LossConfig,
    precision: &PrecisionConfig,
    ae: &'a dyn Autoencoder,
    codec: &LatentCodec,
) -> Result<Box<dyn Objective + 'a>> {
    let mse = Mse { min_snr_gamma: loss.min_snr_gamma };
    Ok(match (&loss.lpl, &loss.pixel) {
        (Some(_), Some(_)) => {
            return Err(invalid("loss", "give `[loss.lpl]` or `[loss.pixel]`, not both"));
        }
        (Some(c), None) => Box::new(MseLpl {
            mse,
            lpl: LatentPerceptualLoss::new(ae, codec.clone(), c.clone())?,
            decoder_autocast: precision.lpl_decoder_autocast,
        }),
        (None, Some(p)) => {
            Box::new(MsePixel { mse, ae, codec: codec.clone(), weight: p.weight, gate: p.gate })
        }
        (None, None) => Box::new(mse),
    })
}
