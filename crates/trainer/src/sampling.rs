//! Sampling from a denoiser: one [`SampleRequest`] describes what to sample and is used by
//! the grids of a training run, periodic evaluation, `lpl sample`, `lpl eval` and the
//! ablation; [`with_ema_weights`] samples from a model's EMA weights.

use std::path::Path;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_denoiser::{Conditioning, Denoiser};
use lpl_schedulers::{
    Branch, Guidance, ModelError, NoiseSchedule, Parameterization, Sampler, SamplerConfig,
    TorchNoise,
};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

use crate::ema::Ema;
use crate::error::{Result, invalid};
use crate::run_config::SampleConfig;

/// The class labels of a [`SampleRequest`].
#[derive(Debug)]
pub enum SampleLabels {
    /// No labels (unconditional models, or the null class everywhere): no guidance.
    Unconditional,
    /// `0, 1, ..., classes - 1, 0, 1, ...`: each row of a grid `classes` wide shows the
    /// classes in order.
    Cycle(i64),
    /// Given labels `(count,)`, checked against the model's classes when sampling starts.
    Given(Tensor),
}

/// The step-noise seed of the batch starting at row `start` of a request seeded `seed`.
fn batch_seed(seed: u64, start: i64) -> i64 {
    (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        as i64
        & i64::MAX
}

/// What to sample: the model and its schedule, the sampler and its steps, guidance and its
/// interval, the labels, the seed of the initial noise, how many and how many per call.
///
/// The initial noise `(count, C, h, w)` is drawn at once from `seed`, so the first `k`
/// samples do not depend on `count` or `batch` for deterministic samplers (DDIM with
/// eta = 0, DPM-Solver++, Euler, Heun, flow); stochastic ones draw their step noise from a
/// generator seeded per batch (by `seed` and the batch's first row), so a batch comes out
/// the same whichever process samples it ([`SampleRequest::latents_of_batches`]).
pub struct SampleRequest<'a> {
    /// The denoiser (its current weights: see [`with_ema_weights`]).
    pub model: &'a dyn Denoiser,
    /// Its noise schedule.
    pub schedule: &'a NoiseSchedule,
    /// What it predicts.
    pub parameterization: Parameterization,
    /// `[C, h, w]` of one latent.
    pub latent_shape: [i64; 3],
    /// The sampler and its number of steps.
    pub sampler: SamplerConfig,
    /// Classifier-free guidance (needs labels and a class-conditional model).
    pub guidance: Guidance,
    /// Class labels.
    pub labels: SampleLabels,
    /// Seed of the initial noise (and of stochastic samplers' step noise).
    pub seed: u64,
    /// Number of samples.
    pub count: usize,
    /// Samples per sampler run (the model sees twice as many rows under guidance); 0: all.
    pub batch: usize,
    /// Where to compute.
    pub device: Device,
}

impl<'a> SampleRequest<'a> {
    /// A request for `sample` (sampler, guidance, count, seed) from `model`, unconditional,
    /// all in one batch (see [`Self::cycling`] for labels).
    pub fn new(
        model: &'a dyn Denoiser,
        schedule: &'a NoiseSchedule,
        parameterization: Parameterization,
        latent_shape: [i64; 3],
        sample: &SampleConfig,
        device: Device,
    ) -> Self {
        Self {
            model,
            schedule,
            parameterization,
            latent_shape,
            sampler: sample.sampler.clone(),
            guidance: sample.guidance.clone(),
            labels: SampleLabels::Unconditional,
            seed: sample.seed,
            count: sample.count,
            batch: 0,
            device,
        }
    }

    /// Labels cycling over the data's `classes` (`None`: unconditional data, no labels; the
    /// model was then trained on its null class only).
    pub fn cycling(mut self, classes: Option<i64>) -> Self {
        self.labels = classes.map_or(SampleLabels::Unconditional, SampleLabels::Cycle);
        self
    }

    /// The labels `(count,)` on the CPU, checked once here (no check per model call).
    fn label_tensor(&self) -> Result<Option<Tensor>> {
        let n = self.count as i64;
        let labels = match &self.labels {
            SampleLabels::Unconditional => return Ok(None),
            SampleLabels::Cycle(k) => Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(*k),
            SampleLabels::Given(l) => l.shallow_clone(),
        };
        let classes = self.model.num_classes().ok_or_else(|| {
            invalid("labels", "the model is not class-conditional: sample it without labels")
        })?;
        if labels.size() != [n] {
            return Err(invalid(
                "labels",
                format!("{} samples need ({n},) labels, got {:?}", n, labels.size()),
            ));
        }
        let checked = Conditioning::class_labels(labels, classes)?;
        Ok(checked.labels)
    }

    /// Samples per sampler run.
    fn batch_rows(&self) -> i64 {
        if self.batch == 0 { (self.count as i64).max(1) } else { self.batch as i64 }
    }

    /// The number of sampler runs (batches) the request takes.
    pub fn batch_count(&self) -> usize {
        self.count.div_ceil(self.batch_rows() as usize)
    }

    /// Model-space latents `(count, C, h, w)`, f32 on the request's device.
    pub fn latents(&self) -> Result<Tensor> {
        self.latents_of_batches(0..self.batch_count())
    }

    /// The latents of batches `range` only (rows `range.start * batch ..`): what one of
    /// several processes sampling one request computes; the concatenation over a partition
    /// of `0..batch_count()` is [`Self::latents`], value for value.
    pub fn latents_of_batches(&self, range: std::ops::Range<usize>) -> Result<Tensor> {
        let mut rng = GlobalRng::seeded(self.seed as i64);
        let labels = self.label_tensor()?;
        let [c, h, w] = self.latent_shape;
        let n = self.count as i64;
        let noise = Tensor::f_randn([n, c, h, w], (Kind::Float, self.device))?;
        let sampler = Sampler::new(self.schedule, self.parameterization, &self.sampler)?;
        let batch = self.batch_rows();
        let null = self.model.num_classes().unwrap_or(0);
        let mut parts = Vec::new();
        for k in range {
            let start = k as i64 * batch;
            if start >= n {
                break;
            }
            // a stochastic sampler's step noise: from (seed, first row), whoever samples it
            rng.reseed(batch_seed(self.seed, start));
            let rows = batch.min(n - start);
            let noise = noise.narrow(0, start, rows);
            let labels = labels.as_ref().map(|l| l.narrow(0, start, rows).to_device(self.device));
            let call = |x: &Tensor, t: &Tensor, branch: Branch| -> Result<Tensor, ModelError> {
                let cond = match (&labels, branch) {
                    (None, _) => Conditioning::none(),
                    (Some(l), Branch::Conditional) => Conditioning::labels(l.shallow_clone()),
                    (Some(l), Branch::Both) => {
                        Conditioning::labels(Tensor::f_cat(&[l, &l.full_like(null)], 0)?)
                    }
                };
                Ok(self.model.forward(x, t, &cond)?)
            };
            let out = tch::no_grad(|| {
                if labels.is_some() && self.guidance.scale != 1.0 {
                    sampler.run(&noise, &mut self.guidance.wrap(call), &mut TorchNoise, None)
                } else {
                    let mut plain = |x: &Tensor, t: &Tensor| call(x, t, Branch::Conditional);
                    sampler.run(&noise, &mut plain, &mut TorchNoise, None)
                }
            })?;
            parts.push(out);
        }
        if parts.is_empty() {
            return Ok(Tensor::f_zeros([0, c, h, w], (Kind::Float, self.device))?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Pixel images `(count, C_img, H, W)` in `[0, 1]` on the CPU, decoded by `ae` through
    /// `codec`.
    pub fn images(&self, ae: &dyn Autoencoder, codec: &LatentCodec) -> Result<Tensor> {
        decode(ae, codec, &self.latents()?)
    }

    /// [`Self::images`] sampled by the ranks of `world`, each its share of the batches (the
    /// values one process computes for them), decoded and gathered on rank 0 through files
    /// in `dir` ([`crate::distributed::World::gather_rows_to_main`]); `None` on the other
    /// ranks.
    pub fn images_across(
        &self,
        world: &crate::distributed::World,
        ae: &dyn Autoencoder,
        codec: &LatentCodec,
        dir: &Path,
        tag: &str,
    ) -> Result<Option<Tensor>> {
        let latents = self.latents_of_batches(world.share(self.batch_count()))?;
        world.gather_rows_to_main(&decode(ae, codec, &latents)?, dir, tag)
    }

    /// The class label of each sample `(count,)` i64, when there are labels.
    pub fn sample_labels(&self) -> Option<Tensor> {
        match &self.labels {
            SampleLabels::Unconditional => None,
            SampleLabels::Cycle(k) => Some(
                Tensor::arange(self.count as i64, (Kind::Int64, tch::Device::Cpu)).remainder(*k),
            ),
            SampleLabels::Given(t) => Some(t.to_device(tch::Device::Cpu)),
        }
    }

    /// [`Self::images`] as a grid PNG at `path`, one row per cycle of the classes (at most
    /// 32; else square).
    pub fn write_grid(&self, ae: &dyn Autoencoder, codec: &LatentCodec, path: &Path) -> Result<()> {
        self.write_grid_of(&self.images(ae, codec)?, path)
    }

    /// `images` (from [`Self::images`]) as the grid PNG of [`Self::write_grid`].
    pub fn write_grid_of(&self, images: &Tensor, path: &Path) -> Result<()> {
        let n = images.size()[0];
        let square = (n as f64).sqrt().ceil() as i64;
        let nrow = match &self.labels {
            // a row per cycle of the classes, unless there are more classes than a grid
            // shows in a row (ImageNet's 1000)
            SampleLabels::Cycle(k) if *k <= 32 => *k,
            _ => square,
        };
        let grid = lpl_metrics::grid::make_grid(images, nrow.max(1), 2);
        lpl_data::folder::write_png(&grid, path)?;
        Ok(())
    }
}

/// Images in `[0, 1]` `(N, C, H, W)` to uint8 `(N, H, W, 3)` as ADM's evaluator and DiT's
/// `sample_ddp.py` store them (grey images repeated to RGB), rounded as
/// `(x * 255).round().clamp(0, 255)`.
pub fn to_uint8_rgb(images: &Tensor) -> Tensor {
    let rgb = if images.size().get(1) == Some(&1) {
        images.repeat([1, 3, 1, 1])
    } else {
        images.shallow_clone()
    };
    (rgb * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).permute([0, 2, 3, 1]).contiguous()
}

/// Model-space latents `(n, C, h, w)` decoded 64 at a time straight to the uint8 `(n, H, W,
/// 3)` pixels of [`to_uint8_rgb`] on the CPU: 50,000 ImageNet-256 samples take 9.8 GB this
/// way, not the 39 GB of f32 images.
pub fn decode_to_uint8(
    ae: &dyn Autoencoder,
    codec: &LatentCodec,
    latents: &Tensor,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in latents.split(64, 0) {
        parts.push(to_uint8_rgb(&decode(ae, codec, &chunk)?));
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// Images in `[0, 1]` `(N, C, H, W)` to the `.npz` layout of ADM's evaluator and DiT's
/// `sample_ddp.py` ([`write_npz_pixels`] of [`to_uint8_rgb`]).
pub fn write_npz(images: &Tensor, labels: Option<&Tensor>, path: &Path) -> Result<()> {
    write_npz_pixels(&to_uint8_rgb(images), labels, path)
}

/// uint8 `(N, H, W, 3)` pixels as `arr_0` of an `.npz` (written atomically); with `labels`,
/// `arr_1` int64 `(N,)` as ADM writes them.
pub fn write_npz_pixels(pixels: &Tensor, labels: Option<&Tensor>, path: &Path) -> Result<()> {
    let mut arrays = vec![("arr_0", pixels.shallow_clone())];
    if let Some(l) = labels {
        arrays.push(("arr_1", l.to_kind(Kind::Int64).to_device(tch::Device::Cpu)));
    }
    let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(k, v)| (*k, v)).collect();
    lpl_tensor_io::npz::write_npz(path, &refs)?;
    Ok(())
}

/// Model-space latents `(n, C, h, w)` to pixel images `(n, C_img, H, W)` in `[0, 1]`, on the
/// CPU, decoded 64 at a time.
pub fn decode(ae: &dyn Autoencoder, codec: &LatentCodec, latents: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        let mut parts = Vec::new();
        for chunk in latents.split(64, 0) {
            parts.push(
                codec
                    .output_to_pixels(&ae.decode(&codec.to_decoder(&chunk)?)?)
                    .to_device(Device::Cpu),
            );
        }
        Ok(Tensor::cat(&parts, 0))
    })
}

/// Runs `f` with the EMA weights of `ema` in `model`, then puts the model's own weights
/// back (also when `f` fails).
pub fn with_ema_weights<T>(
    model: &dyn Denoiser,
    ema: &Ema,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let vs = model.var_store();
    let backup: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
    ema.copy_to(vs);
    let result = f();
    let vars = vs.variables();
    tch::no_grad(|| {
        for (k, v) in &backup {
            if let Some(p) = vars.get(k) {
                p.shallow_clone().copy_(v);
            }
        }
    });
    result
}
