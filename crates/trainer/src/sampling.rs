//! Sampling from a trained denoiser (its EMA weights) and writing image grids.

use std::path::Path;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_denoiser::{Conditioning, Denoiser};
use lpl_schedulers::{NoiseSchedule, Parameterization, Sampler, TorchNoise};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::run_config::SampleConfig;

/// `n` model-space latents `(n, C, h, w)` from `model` with the configured sampler and
/// guidance, class `labels` `(n,)` (or unconditional), initial noise from `sample.seed`.
#[allow(clippy::too_many_arguments)]
pub fn sample_latents(
    model: &dyn Denoiser,
    schedule: &NoiseSchedule,
    param: Parameterization,
    sample: &SampleConfig,
    labels: Option<&Tensor>,
    latent_shape: &[i64; 3],
    n: i64,
    device: Device,
) -> Result<Tensor> {
    let _rng = GlobalRng::seeded(sample.seed as i64);
    let [c, h, w] = *latent_shape;
    let noise = Tensor::randn([n, c, h, w], (Kind::Float, device));
    let sampler = Sampler::new(schedule, param, &sample.sampler)?;
    let cond = |conditional: bool| match (labels, conditional) {
        (Some(l), true) => Conditioning::labels(l.to_device(device)),
        _ => Conditioning::none(),
    };
    let failure = std::cell::RefCell::new(None);
    let call = |x: &Tensor, t: &Tensor, conditional: bool| -> Tensor {
        model.forward(x, t, &cond(conditional)).unwrap_or_else(|e| {
            failure.borrow_mut().get_or_insert(e.to_string());
            x.zeros_like()
        })
    };
    let out = tch::no_grad(|| -> Result<Tensor> {
        if labels.is_some() && sample.guidance.scale != 1.0 {
            let mut guided = sample.guidance.wrap(call);
            Ok(sampler.run(&noise, &mut guided, &mut TorchNoise, None)?)
        } else {
            let mut plain = |x: &Tensor, t: &Tensor| call(x, t, true);
            Ok(sampler.run(&noise, &mut plain, &mut TorchNoise, None)?)
        }
    })?;
    if let Some(e) = failure.into_inner() {
        return Err(TrainError::Torch(format!("denoiser failed while sampling: {e}")));
    }
    Ok(out)
}

/// Model-space latents `(n, C, h, w)` to pixel images `(n, C_img, H, W)` in `[0, 1]`.
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

/// Samples `sample.count` images `(N, C, H, W)` in `[0, 1]` from the EMA weights of `model`
/// (labels cycle over the classes, so each grid row shows the classes in order). The model's
/// own weights are restored afterwards.
#[allow(clippy::too_many_arguments)]
pub fn sample_ema_images(
    model: &dyn Denoiser,
    ema: &Ema,
    ae: &dyn Autoencoder,
    codec: &LatentCodec,
    schedule: &NoiseSchedule,
    param: Parameterization,
    sample: &SampleConfig,
    classes: Option<i64>,
    latent_shape: &[i64; 3],
    device: Device,
) -> Result<Tensor> {
    let vs = model.var_store();
    let backup: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
    ema.copy_to(vs);
    let n = sample.count as i64;
    let labels = classes.map(|k| Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(k));
    let result =
        sample_latents(model, schedule, param, sample, labels.as_ref(), latent_shape, n, device);
    let vars = vs.variables();
    tch::no_grad(|| {
        for (k, v) in &backup {
            if let Some(p) = vars.get(k) {
                p.shallow_clone().copy_(v);
            }
        }
    });
    decode(ae, codec, &result?)
}

/// [`sample_ema_images`], written as a grid PNG at `path`.
#[allow(clippy::too_many_arguments)]
pub fn write_grid(
    model: &dyn Denoiser,
    ema: &Ema,
    ae: &dyn Autoencoder,
    codec: &LatentCodec,
    schedule: &NoiseSchedule,
    param: Parameterization,
    sample: &SampleConfig,
    classes: Option<i64>,
    latent_shape: &[i64; 3],
    path: &Path,
    device: Device,
) -> Result<()> {
    let images = sample_ema_images(
        model,
        ema,
        ae,
        codec,
        schedule,
        param,
        sample,
        classes,
        latent_shape,
        device,
    )?;
    let n = images.size()[0];
    let nrow = classes.unwrap_or((n as f64).sqrt().ceil() as i64).max(1);
    let grid = lpl_metrics::grid::make_grid(&images, nrow, 2);
    lpl_data::folder::write_png(&grid, path)?;
    Ok(())
}
