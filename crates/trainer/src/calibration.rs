//! Calibrating the weight of an added loss term (LPL, or the pixel baseline) to a share of
//! the total loss, as the paper's guidance states it (LPL about 20% of the loss): the terms
//! of a run's objective are measured with the weights of a checkpoint (the fork of a
//! continuation) on the run's first training batches, the term at weight 1, and the weight
//! that makes it the fraction `share` of the loss follows:
//! `w = share / (1 - share) * mse / term`.

use std::path::Path;

use lpl_data::{BatchCursor, CacheBatches, LatentCache};
use lpl_denoiser::Conditioning;
use lpl_schedulers::{NoiseSchedule, TimeSampler};
use lpl_torch_ext::GlobalRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::diffusion_training::{build_model, open_autoencoder};
use crate::error::{Result, invalid};
use crate::objective::{self, MicroBatch};
use crate::run_checkpoint;
use crate::run_config::RunConfig;

/// Training batches a calibration measures.
pub const CALIBRATION_BATCHES: usize = 4;

/// The measured terms and the weight they give.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The share asked for.
    pub share: f64,
    /// The calibrated weight.
    pub weight: f64,
    /// Mean MSE term over the batches.
    pub mse: f64,
    /// Mean added term at weight 1.
    pub term: f64,
    /// Batches measured.
    pub batches: usize,
}

/// The mean `mse` term and the mean added term (`lpl` or `pixel`, as the objective logs it:
/// at the configured weight) of `run`'s objective with the model weights of `checkpoint`
/// (`model.` entries) over the first `batches` training batches of `run` (its data order,
/// time sampling and seed; noise from a fixed seed; no label dropout; no gradient).
pub fn measure_terms(
    run: &RunConfig,
    checkpoint: &Path,
    batches: usize,
    device: Device,
) -> Result<(f64, f64)> {
    let _rng = GlobalRng::lock();
    let cache = std::sync::Arc::new(LatentCache::open(&run.data.cache)?);
    let manifest = &cache.manifest;
    let model = build_model(run, manifest.latent_shape, manifest.num_classes, device)?;
    let (_, tensors) = run_checkpoint::load(checkpoint)?;
    lpl_tensor_io::load_into(
        model.var_store(),
        &run_checkpoint::strip_prefix(&tensors, "model."),
        checkpoint,
    )?;
    let ae = open_autoencoder(run, device)?;
    let codec = manifest.codec.clone();
    // the plain value: no chunked or recomputed gradient
    let mut loss = run.loss.clone();
    if let Some(l) = loss.lpl.as_mut() {
        l.chunk = None;
        l.recompute = false;
    }
    let objective = objective::from_config(&loss, &run.precision, ae.as_ref(), &codec)?;
    let schedule = NoiseSchedule::new(&run.diffusion.schedule()?)?.to_device(device);
    let mut times = TimeSampler::new(run.diffusion.time_sampling.clone(), run.train.seed)?;
    let mut stream = CacheBatches::new(
        cache.clone(),
        run.train.batch_size,
        run.train.seed,
        run.data.flip,
        BatchCursor::default(),
    )?;
    let channels = manifest.latent_shape[0];
    let (mut mse, mut term) = (0.0, 0.0);
    for i in 0..batches {
        let (batch, _) = stream.next_batch()?;
        tch::manual_seed(7_919 + i as i64);
        let z0 = batch.latents.to_device(device);
        let cond = match &batch.labels {
            Some(l) => Conditioning::labels(l.to_device(device)),
            None => Conditioning::none(),
        };
        let t_cpu = times.sample(&schedule, batch.indices.len(), Device::Cpu)?;
        let t = t_cpu.to_device(device);
        let eps = z0.randn_like();
        let z_t = schedule.add_noise(&z0, &eps, &t)?;
        let out = tch::no_grad(|| -> Result<objective::Loss> {
            let pred = model.forward(&z_t, &schedule.model_time(&t)?, &cond)?;
            // the mean part of a learned-variance prediction
            let pred = pred.narrow(1, 0, channels).to_kind(Kind::Float);
            objective.loss(&MicroBatch {
                pred: &pred,
                z0: &z0,
                eps: &eps,
                z_t: &z_t,
                t: &t,
                t_cpu: &t_cpu,
                schedule: &schedule,
                parameterization: run.diffusion.parameterization,
                step: run.loss.lpl.as_ref().map_or(0, |l| l.start_step),
                device,
                autocast: false,
                share: objective::Share::whole(&t_cpu),
            })
        })?;
        for (name, value) in &out.terms {
            let v = f64::try_from(value.mean(Kind::Float))?;
            match *name {
                "mse" => mse += v,
                "lpl" | "pixel" => term += v,
                _ => {}
            }
        }
    }
    let n = batches.max(1) as f64;
    Ok((mse / n, term / n))
}

/// The weight that makes the added term of `run` the fraction `share` of its loss at
/// `checkpoint` (see the module docs): `run`'s weight must be 1 (it is measured as is).
pub fn calibrate(
    run: &RunConfig,
    checkpoint: &Path,
    share: f64,
    device: Device,
) -> Result<Calibration> {
    if !(share > 0.0 && share < 1.0) {
        return Err(invalid("share", format!("must be in (0, 1), got {share}")));
    }
    let (mse, term) = measure_terms(run, checkpoint, CALIBRATION_BATCHES, device)?;
    if !(term > 0.0 && term.is_finite() && mse.is_finite()) {
        return Err(invalid(
            "share",
            format!(
                "the added term is {term} on the calibration batches (no sample inside its gate?): no weight gives it a share of the loss"
            ),
        ));
    }
    let weight = share / (1.0 - share) * mse / term;
    Ok(Calibration { share, weight, mse, term, batches: CALIBRATION_BATCHES })
}
