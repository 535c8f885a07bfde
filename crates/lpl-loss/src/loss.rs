//! [`LatentPerceptualLoss`]: shared/LPL.md steps 3 to 10 for one batch.

use lpl_autoencoder::{Autoencoder, FeatureLayer, LatentCodec};
use lpl_schedulers::{NoiseSchedule, Parameterization, min_snr_weights};
use tch::{Device, Kind, Tensor};

use crate::config::{
    BatchReduce, Distance, LayerWeights, LplConfig, LplGate, MaskSource, Normalization,
    SpatialReduce,
};
use crate::error::{LplError, Result};
use crate::mask::outlier_mask;
use crate::normalize::normalize;

/// Channels of a feature map whose layer term is computed at once when the decoder is
/// recomputed (`recompute = true`): at the SD decoder's 256x256 maps, 32 channels are 8 MB a
/// map instead of 64 MB for all 256.
pub const TERM_CHANNEL_CHUNK: i64 = 32;

/// What one call computes; every field is a tensor on the input's device (no host
/// synchronisation), read by the trainer at log intervals.
#[derive(Debug)]
pub struct LplOutput {
    /// `weight * reduce_b(L(b))`, 0-d f32, to add to the diffusion loss.
    pub total: Tensor,
    /// `L(b)` per sample before `weight` and min-SNR weighting, `(B,)` f32, 0 outside the gate.
    pub per_sample: Tensor,
    /// Per layer (mid block first) and sample, `omega_l d_l(b) / n_layers`, `(B, L)` f32, 0
    /// outside the gate.
    pub per_sample_layer: Tensor,
    /// Mean over kept samples of `omega_l d_l(b) / n_layers`, `(L,)` f32 (zeros if none kept).
    pub per_layer: Tensor,
    /// Fraction of the batch inside the gate, 0-d f32.
    pub kept_fraction: Tensor,
    /// Fraction of feature elements removed by the outlier mask per layer over kept samples,
    /// `(L,)` f32.
    pub masked_fraction: Tensor,
}

/// One compared layer: its weight and, if masked, its down factor below full resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// The tapped layer.
    pub layer: FeatureLayer,
    /// `omega_l`.
    pub weight: f64,
    /// `Some(d)` when the outlier mask applies (d = 1 or 2).
    pub mask_down: Option<i64>,
}

/// The latent perceptual loss over a frozen autoencoder's decoder.
pub struct LatentPerceptualLoss<'a> {
    ae: &'a dyn Autoencoder,
    codec: LatentCodec,
    config: LplConfig,
    plan: Vec<LayerPlan>,
    depth: usize,
    term_channel_chunk: i64,
}

impl<'a> LatentPerceptualLoss<'a> {
    /// Builds the loss for `ae` (which must be frozen) with the latent constants of `codec`.
    pub fn new(ae: &'a dyn Autoencoder, codec: LatentCodec, config: LplConfig) -> Result<Self> {
        config.validate()?;
        codec.validate()?;
        let trainable = ae.parameters().iter().filter(|p| p.requires_grad()).count();
        if trainable > 0 {
            return Err(LplError::TrainableDecoder(trainable));
        }
        let layers = ae.feature_layers();
        let up_blocks = layers.len().saturating_sub(1);
        let depth = config.depth.unwrap_or(up_blocks);
        if depth > up_blocks {
            return Err(crate::error::invalid(
                "depth",
                format!("{depth} exceeds the decoder's {up_blocks} up blocks"),
            ));
        }
        let full = layers.iter().map(|l| l.upscale).max().unwrap_or(1);
        let used = &layers[..=depth];
        if let LayerWeights::Explicit(w) = &config.layer_weights
            && w.len() != used.len()
        {
            return Err(crate::error::invalid(
                "layer_weights",
                format!("{} weights for {} compared layers", w.len(), used.len()),
            ));
        }
        let plan = used
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let weight = match &config.layer_weights {
                    LayerWeights::InverseUpscale => 1.0 / layer.upscale as f64,
                    LayerWeights::PowerLaw => 2f64.powi(-(i.min(3) as i32)),
                    LayerWeights::Uniform => 1.0,
                    LayerWeights::Explicit(w) => w[i],
                };
                let down = full / layer.upscale.max(1);
                let mask_down = (config.mask && down <= 2).then_some(down);
                LayerPlan { layer: layer.clone(), weight, mask_down }
            })
            .collect();
        Ok(Self { ae, codec, config, plan, depth, term_channel_chunk: TERM_CHANNEL_CHUNK })
    }

    /// Sets the channels of a feature map whose layer term is computed at once under
    /// `recompute` (default [`TERM_CHANNEL_CHUNK`]; fewer: less memory, more small kernels).
    /// The value and gradient do not depend on it beyond f32 summation order.
    pub fn with_term_channel_chunk(mut self, channels: i64) -> Self {
        self.term_channel_chunk = channels.max(1);
        self
    }

    /// The compared layers with their weights and mask factors.
    pub fn plan(&self) -> &[LayerPlan] {
        &self.plan
    }

    /// Its configuration.
    pub fn config(&self) -> &LplConfig {
        &self.config
    }

    /// Whether the loss is on at optimiser step `step` (`step >= start_step`).
    pub fn active_at(&self, step: usize) -> bool {
        step >= self.config.start_step
    }

    /// Indices of the samples inside the gate, decided on the host from `t` `(B,)` (pass t
    /// on the CPU, as the trainer has it, to avoid a device synchronisation).
    pub fn kept_indices(&self, t: &Tensor, schedule: &NoiseSchedule) -> Result<Vec<i64>> {
        let t_cpu = t.f_to_device(Device::Cpu)?;
        let keep = match self.config.gate {
            LplGate::All => return Ok((0..t.size()[0]).collect()),
            LplGate::Snr { tau } => lpl_schedulers::snr_gate(schedule, &t_cpu, tau)?,
            LplGate::Timestep { max } => lpl_schedulers::timestep_gate(schedule, &t_cpu, max)?,
        };
        let keep = Vec::<bool>::try_from(keep)?;
        Ok(keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as i64).collect())
    }

    /// The loss of predicted clean latents `x0_hat` against `z0`, both model-space
    /// `(B, C, h, w)`, at noise levels `t` `(B,)` of `schedule`. Gradients reach `x0_hat`
    /// only; samples outside the gate are not decoded and get exactly zero gradient.
    /// `parameterization` is needed only for min-SNR weighting.
    pub fn loss(
        &self,
        x0_hat: &Tensor,
        z0: &Tensor,
        t: &Tensor,
        schedule: &NoiseSchedule,
        parameterization: Parameterization,
    ) -> Result<LplOutput> {
        if x0_hat.size() != z0.size() || x0_hat.dim() != 4 || t.size() != [x0_hat.size()[0]] {
            return Err(LplError::Input(format!(
                "x0_hat {:?}, z0 {:?} and t {:?} must be (B, C, h, w), (B, C, h, w) and (B,)",
                x0_hat.size(),
                z0.size(),
                t.size()
            )));
        }
        let kept = self.kept_indices(t, schedule)?;
        let b = x0_hat.size()[0];
        let device = x0_hat.device();
        let layers = self.plan.len() as i64;
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, device));
        if kept.is_empty() {
            // Keep the graph connected so `backward` works and gives zero gradient.
            let total = x0_hat.to_kind(Kind::Float).sum(Kind::Float) * 0.0;
            return Ok(LplOutput {
                total,
                per_sample: zeros(&[b]),
                per_sample_layer: zeros(&[b, layers]),
                per_layer: zeros(&[layers]),
                kept_fraction: zeros(&[]),
                masked_fraction: zeros(&[layers]),
            });
        }
        let idx = Tensor::from_slice(&kept).to_device(device);
        let pred = x0_hat.to_kind(Kind::Float).index_select(0, &idx);
        let target = z0.to_kind(Kind::Float).index_select(0, &idx).detach();
        let (per_kept, masked) = self.per_layer_distances(&pred, &target)?; // (K, L), (L,)
        let per_sample_kept = per_kept.sum_dim_intlist(1, false, Kind::Float); // (K,)
        let k = kept.len() as f64;
        // a new tensor, not in place: `per_sample` reports L(b) before the min-SNR weights
        let weighted = match self.config.min_snr_gamma {
            Some(gamma) => {
                let t_cpu = t.f_to_device(Device::Cpu)?;
                let t_kept = t_cpu.index_select(0, &Tensor::from_slice(&kept));
                let w = min_snr_weights(schedule, parameterization, &t_kept, gamma)?;
                &per_sample_kept * w.to_device(device)
            }
            None => per_sample_kept.shallow_clone(),
        };
        let reduced = match self.config.batch_reduce {
            BatchReduce::Kept => weighted.sum(Kind::Float) / k,
            BatchReduce::Batch => weighted.sum(Kind::Float) / b as f64,
        };
        let per_sample_layer = zeros(&[b, layers]).index_add(0, &idx, &per_kept.detach());
        Ok(LplOutput {
            total: reduced * self.config.weight,
            per_sample: zeros(&[b]).index_add(0, &idx, &per_sample_kept.detach()),
            per_layer: per_kept.detach().mean_dim(0, false, Kind::Float),
            per_sample_layer,
            kept_fraction: Tensor::from(k / b as f64).to_kind(Kind::Float).to_device(device),
            masked_fraction: masked,
        })
    }

    /// The loss of [`Self::loss`] and its gradient with respect to `x0_hat` `(B, C, h, w)`
    /// (f32), computed `chunk` kept samples at a time: each chunk's decoder graph is built,
    /// differentiated and freed before the next, so peak memory is one chunk's graph. The
    /// loss decomposes over samples (per-sample masks, normalisation and distances; a
    /// mean or a sum over kept samples), so the gradient is that of the whole batch up to
    /// f32 summation order. `x0_hat` is used detached: send the gradient through the
    /// denoiser with `(x0_hat * grad).sum()` (see the trainer's MSE + LPL objective). The
    /// returned [`LplOutput`] is detached.
    pub fn value_and_grad(
        &self,
        x0_hat: &Tensor,
        z0: &Tensor,
        t: &Tensor,
        schedule: &NoiseSchedule,
        parameterization: Parameterization,
        chunk: usize,
    ) -> Result<(LplOutput, Tensor)> {
        let x0 = x0_hat.detach().to_kind(Kind::Float);
        let b = x0.size()[0];
        let device = x0.device();
        let layers = self.plan.len() as i64;
        let kept = self.kept_indices(t, schedule)?;
        let mut grad = x0.zeros_like();
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, device));
        let k = kept.len() as f64;
        let denom = match self.config.batch_reduce {
            BatchReduce::Kept => k,
            BatchReduce::Batch => b as f64,
        };
        let mut total = zeros(&[]);
        let mut per_sample_layer = zeros(&[b, layers]);
        let mut masked = zeros(&[layers]);
        let t_cpu = t.f_to_device(Device::Cpu)?;
        for part in kept.chunks(chunk.max(1)) {
            let idx = Tensor::from_slice(part).to_device(device);
            let pred = x0.index_select(0, &idx).set_requires_grad(true);
            let target = z0.to_kind(Kind::Float).index_select(0, &idx).detach();
            // each kept sample's weight in the value: min-SNR, the loss weight, the reduction
            let mut weights = Tensor::full(
                [part.len() as i64],
                self.config.weight / denom,
                (Kind::Float, device),
            );
            if let Some(gamma) = self.config.min_snr_gamma {
                let t_part = t_cpu.index_select(0, &Tensor::from_slice(part));
                weights *=
                    min_snr_weights(schedule, parameterization, &t_part, gamma)?.to_device(device);
            }
            let recomputed = if self.config.recompute {
                self.per_layer_distances_recomputed(&pred, &target, &weights)?
            } else {
                None
            };
            let (per_kept, masked_part, value) = match recomputed {
                Some((per_kept, masked_part, g)) => {
                    grad = grad.index_add(0, &idx, &g);
                    let value = (per_kept.sum_dim_intlist(1, false, Kind::Float) * &weights)
                        .sum(Kind::Float);
                    (per_kept, masked_part, value)
                }
                None => {
                    let (per_kept, masked_part) = self.per_layer_distances(&pred, &target)?;
                    let value = (per_kept.sum_dim_intlist(1, false, Kind::Float) * &weights)
                        .sum(Kind::Float);
                    let g = Tensor::f_run_backward(&[&value], &[&pred], false, false)?;
                    if let Some(g) = g.first() {
                        grad = grad.index_add(0, &idx, g);
                    }
                    (per_kept, masked_part, value)
                }
            };
            total += value.detach();
            per_sample_layer = per_sample_layer.index_add(0, &idx, &per_kept.detach());
            masked += masked_part * (part.len() as f64 / k);
        }
        let per_layer = if kept.is_empty() {
            zeros(&[layers])
        } else {
            per_sample_layer.sum_dim_intlist(0, false, Kind::Float) / k
        };
        let output = LplOutput {
            total,
            per_sample: per_sample_layer.sum_dim_intlist(1, false, Kind::Float),
            per_layer,
            per_sample_layer,
            kept_fraction: Tensor::from(k / b as f64).to_kind(Kind::Float).to_device(device),
            masked_fraction: masked,
        };
        Ok((output, grad))
    }

    /// Per kept sample and layer `omega_l d_l / n_layers` `(K, L)` (differentiable) and the
    /// masked fraction per layer `(L,)`.
    fn per_layer_distances(&self, pred: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
        let post = self.config.post_quant_conv;
        let pred_f = self.ae.decode_features(&self.codec.to_decoder(pred)?, self.depth, post)?;
        let target_f = self.target_features(target)?;
        let mut columns = Vec::with_capacity(self.plan.len());
        let mut masked = Vec::with_capacity(self.plan.len());
        for ((plan, x), y) in self.plan.iter().zip(&pred_f).zip(&target_f) {
            let (column, m) = self.layer_distance(plan, x, y);
            columns.push(column);
            masked.push(m);
        }
        Ok((Tensor::stack(&columns, 1), Tensor::stack(&masked, 0)))
    }

    /// The decoder features of the clean latents, without a graph.
    fn target_features(&self, target: &Tensor) -> Result<Vec<Tensor>> {
        let post = self.config.post_quant_conv;
        tch::no_grad(|| -> Result<Vec<Tensor>> {
            Ok(self.ae.decode_features(&self.codec.to_decoder(target)?, self.depth, post)?)
        })
    }

    /// One layer's term: `(K,)` weighted distances of the predicted features `x` to the
    /// target's `y`, and the fraction of positions its mask removed (0-d).
    fn layer_distance(&self, plan: &LayerPlan, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let n_layers = self.plan.len() as f64;
        let x = x.to_kind(Kind::Float);
        let y = y.to_kind(Kind::Float).detach();
        let mask = plan.mask_down.map(|down| {
            let source = match self.config.mask_source {
                MaskSource::Target => &y,
                MaskSource::Prediction => &x,
            };
            outlier_mask(
                source,
                self.config.quantile,
                self.config.dilate_kernel,
                self.config.erode_kernel,
                down,
            )
            .to_kind(Kind::Float)
        });
        let y = match &mask {
            Some(m) => &y * m,
            None => y,
        };
        let (xn, yn) = normalize(self.config.norm, &x, &y);
        let diff = xn - yn;
        let mut d = match self.config.distance {
            Distance::L2 => diff.square(),
            Distance::L1 => diff.abs(),
        };
        if let Some(m) = &mask {
            d *= m;
        }
        let dims = [2i64, 3];
        let summed = d.sum_dim_intlist(&dims[..], false, Kind::Float); // (K, C)
        let reduced = match (self.config.spatial_reduce, &mask) {
            (SpatialReduce::MaskedMean, Some(m)) => {
                summed / m.sum_dim_intlist(&dims[..], false, Kind::Float).clamp_min(1.0)
            }
            (SpatialReduce::MaskedMean, None) => {
                let h = d.size()[2];
                let w = d.size()[3];
                summed / (h * w) as f64
            }
            (SpatialReduce::Sum, _) => summed,
        };
        let column = reduced.mean_dim(1, false, Kind::Float) * (plan.weight / n_layers); // (K,)
        let masked = match &mask {
            Some(m) => m.le(0.5).to_kind(Kind::Float).mean(Kind::Float),
            None => Tensor::zeros([], (Kind::Float, x.device())),
        };
        (column, masked)
    }

    /// [`Self::per_layer_distances`] and the gradient of `sum_k weights[k] * row_k` (the rows'
    /// layer sums) with respect to `pred`, recomputing the decoder (activation
    /// checkpointing): a forward without a graph keeps the stage boundaries; then, last
    /// stage first, the stage's own term and its gradient are computed on its output a few
    /// channels at a time ([`Self::layer_term_and_grad`]), and that gradient plus the one
    /// arriving from the stages after it is sent back through the stage one piece at a time
    /// ([`Self::backward_through_stage`]: a resnet's graph at most). `Ok(None)` when the
    /// autoencoder has no stages.
    fn per_layer_distances_recomputed(
        &self,
        pred: &Tensor,
        target: &Tensor,
        weights: &Tensor,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        let post = self.config.post_quant_conv;
        let z = self.codec.to_decoder(&pred.detach())?;
        // each stage's target features are dropped once its term is computed
        let mut target_f = self.target_features(target)?;
        // forward: the input of every stage (and the last stage's output)
        let mut inputs = vec![z];
        let stages = self.plan.len();
        for stage in 0..stages {
            let out = tch::no_grad(|| self.ae.decode_stage(&inputs[stage], stage, post))?;
            let Some(out) = out else { return Ok(None) };
            inputs.push(out);
        }
        // filled last stage first, reversed after the sweep
        let mut columns = Vec::with_capacity(stages);
        let mut masked = Vec::with_capacity(stages);
        let mut grad: Option<Tensor> = None;
        for stage in (0..stages).rev() {
            let output = inputs.pop().ok_or_else(|| LplError::Compute("no stage output".into()))?;
            let target = target_f.pop().ok_or_else(|| LplError::Compute("no target".into()))?;
            let (column, m, g_term) =
                self.layer_term_and_grad(&self.plan[stage], &output, &target, weights)?;
            drop((output, target));
            let g_out = match grad.take() {
                Some(mut g) => {
                    g += g_term;
                    g
                }
                None => g_term,
            };
            grad = Some(self.backward_through_stage(&inputs[stage], stage, g_out)?);
            columns.push(column);
            masked.push(m);
        }
        columns.reverse();
        masked.reverse();
        // through the codec's map into decoder space (affine, but let autograd say so)
        let pred = pred.detach().set_requires_grad(true);
        let z = self.codec.to_decoder(&pred)?;
        let g = grad.ok_or_else(|| LplError::Compute("no decoder stage ran".into()))?;
        let objective = (z.to_kind(Kind::Float) * g).sum(Kind::Float);
        let g = Tensor::f_run_backward(&[&objective], &[&pred], false, false)?;
        let g = g.into_iter().next().ok_or_else(|| LplError::Compute("no gradient".into()))?;
        Ok(Some((Tensor::stack(&columns, 1), Tensor::stack(&masked, 0), g)))
    }

    /// One layer's term on the stage output `out` `(K, C, H, W)` (no graph needed) against
    /// the target's features: its column `(K,)` (detached), its masked fraction (0-d), and
    /// the gradient of `sum_k weights[k] * column[k]` with respect to `out`. Computed
    /// [`TERM_CHANNEL_CHUNK`] channels (or as set) at a time where the term decomposes over channels
    /// (masks, statistics and distances per channel, then the mean over channels: every
    /// normalisation but the channel-L2 ones, which take all channels at once), so only a
    /// few channels' intermediate maps exist at any time.
    fn layer_term_and_grad(
        &self,
        plan: &LayerPlan,
        out: &Tensor,
        target: &Tensor,
        weights: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = out.size()[1];
        let step = match self.config.norm {
            Normalization::TargetChannelL2 | Normalization::ChannelL2 => c,
            _ => self.term_channel_chunk.min(c),
        };
        let mut column: Option<Tensor> = None;
        let mut masked: Option<Tensor> = None;
        // written chunk by chunk (a list of chunks then a concatenation would hold it twice)
        let grad = Tensor::f_zeros(out.size(), (Kind::Float, out.device()))?;
        for c0 in (0..c).step_by(step.max(1) as usize) {
            let cc = step.min(c - c0);
            let x = out.narrow(1, c0, cc).detach().to_kind(Kind::Float).set_requires_grad(true);
            let (col, m) = self.layer_distance(plan, &x, &target.narrow(1, c0, cc));
            // this chunk's share of the mean over channels
            let share = cc as f64 / c as f64;
            let col = col * share;
            let objective = (&col * weights).sum(Kind::Float);
            let g = Tensor::f_run_backward(&[&objective], &[&x], false, false)?;
            let g = g.into_iter().next().ok_or_else(|| LplError::Compute("no grad".into()))?;
            grad.narrow(1, c0, cc).copy_(&g);
            let col = col.detach();
            let m = m * share;
            column = Some(column.map_or(col.shallow_clone(), |t| t + &col));
            masked = Some(masked.map_or(m.shallow_clone(), |t| t + &m));
        }
        let none = || LplError::Compute("a feature map without channels".into());
        Ok((column.ok_or_else(none)?, masked.ok_or_else(none)?, grad))
    }

    /// The gradient at the input `input` of decoder stage `stage` given the gradient `g_out`
    /// at its output: the stage's pieces ([`Autoencoder::decode_stage_part`]) are run once
    /// without a graph to keep their boundaries, then each, last first, again with a graph,
    /// differentiated and freed.
    fn backward_through_stage(
        &self,
        input: &Tensor,
        stage: usize,
        g_out: Tensor,
    ) -> Result<Tensor> {
        let post = self.config.post_quant_conv;
        let parts = self.ae.decode_stage_parts(stage).max(1);
        let vanished = || LplError::Compute("decoder stage pieces vanished".into());
        let mut bounds = vec![input.shallow_clone()];
        for part in 0..parts - 1 {
            let out = tch::no_grad(|| self.ae.decode_stage_part(&bounds[part], stage, part, post))?
                .ok_or_else(vanished)?;
            bounds.push(out);
        }
        let mut g = g_out;
        for part in (0..parts).rev() {
            bounds.truncate(part + 1);
            let x = bounds[part].detach().set_requires_grad(true);
            let out = self.ae.decode_stage_part(&x, stage, part, post)?.ok_or_else(vanished)?;
            let objective = (out.to_kind(Kind::Float) * &g).sum(Kind::Float);
            let grads = Tensor::f_run_backward(&[&objective], &[&x], false, false)?;
            g = grads.into_iter().next().ok_or_else(|| LplError::Compute("no gradient".into()))?;
        }
        Ok(g)
    }
}
