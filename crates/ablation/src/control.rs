//! The positive control: did the LPL arm optimise what LPL measures? Every arm's EMA model
//! predicts the clean latents of a fixed held-out set of (latent, t, noise) triples inside
//! the LPL gate, and the configured LPL and the MSE of those predictions are recorded. The
//! LPL arm must end with a lower held-out LPL than the MSE arm of the same seed; a run in
//! which it does not cannot say anything about LPL, and the report flags it.
//!
//! The held-out latents are the autoencoder's encodings (distribution mean, as the cache's)
//! of the first test-split images the evaluation uses: never trained on. Timesteps are
//! spread evenly over the gate's set (every sample inside it), the noise is drawn from a
//! fixed seed, so every arm and seed sees the same triples.
//!
//! A variant that changes what LPL measures (its normalisation, depth, gate or mask) is
//! judged by its own LPL: every arm's control also records the held-out value under each
//! such variant's LPL (on a set inside that variant's gate), and the variant's arm must be
//! below the MSE arm's on that measure.

use std::collections::BTreeMap;

use lpl_autoencoder::{Autoencoder, LatentCodec};
use lpl_denoiser::Conditioning;
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplGate, x0_from_prediction};
use lpl_schedulers::NoiseSchedule;
use lpl_torch_ext::GlobalRng;
use lpl_trainer::evaluation::TrainedRun;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, invalid};
use crate::stats::significant;

/// Held-out samples in the control set (fewer when the test split is smaller).
pub const CONTROL_COUNT: i64 = 256;

/// Seed of the control set's noise.
const CONTROL_SEED: i64 = 4_242;

/// Candidate times scanned for the gate on a flow schedule (`t = (i + 0.5) / M`).
const FLOW_GRID: i64 = 1000;

/// The held-out triples of one schedule: model-space latents, times inside the gate, noise.
#[derive(Debug)]
pub struct ControlSet {
    /// `(N, C, h, w)` model-space latents of held-out images, on the CPU.
    pub z0: Tensor,
    /// `(N,)` times inside the gate (i64 timesteps for discrete schedules, f32 for flow).
    pub t: Tensor,
    /// `(N, C, h, w)` standard-normal noise.
    pub eps: Tensor,
    /// `(N,)` class labels of the images, when the data has classes.
    pub labels: Option<Tensor>,
}

/// The control values of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// The configured LPL (the `[lpl]` table at weight 1, every sample inside the gate) of
    /// the EMA model's clean-latent predictions, mean over the held-out set.
    pub lpl: f64,
    /// The MSE on the parameterisation's training target over the same set.
    pub mse: f64,
    /// Held-out triples.
    pub count: i64,
    /// The held-out LPL under each variant's own LPL, for the variants that change what is
    /// measured ([`crate::config::LplVariant::changes_the_measure`]), by variant name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_variant: BTreeMap<String, f64>,
}

impl Control {
    /// The held-out LPL of this run measured as `arm` measures it (its own variant's LPL
    /// when recorded, else the configured one).
    pub fn measured_as(&self, arm: &str) -> f64 {
        self.by_variant.get(arm).copied().unwrap_or(self.lpl)
    }
}

/// The times inside `lpl`'s gate on `schedule`: every discrete timestep it keeps, or the
/// kept points of a fine grid for flow.
fn gate_times(lpl: &LatentPerceptualLoss<'_>, schedule: &NoiseSchedule) -> Result<Tensor> {
    let candidates = match schedule {
        NoiseSchedule::Discrete(d) => {
            Tensor::arange(d.num_train_timesteps(), (Kind::Int64, Device::Cpu))
        }
        NoiseSchedule::Flow(_) => {
            (Tensor::arange(FLOW_GRID, (Kind::Float, Device::Cpu)) + 0.5) / FLOW_GRID as f64
        }
    };
    let kept = lpl.kept_indices(&candidates, schedule)?;
    if kept.is_empty() {
        return Err(invalid("lpl", "the gate keeps no time at all: no positive control"));
    }
    Ok(candidates.index_select(0, &Tensor::from_slice(&kept)))
}

impl ControlSet {
    /// The set for `images` `(N, C, H, W)` in `[0, 1]` (held-out: the test split) with
    /// their `labels`, encoded by `ae` through `codec`, times inside the gate of `lpl` on
    /// `schedule` (spread evenly over it), at most [`CONTROL_COUNT`] samples.
    pub fn new(
        ae: &dyn Autoencoder,
        codec: &LatentCodec,
        images: &Tensor,
        labels: Option<&Tensor>,
        lpl: &LatentPerceptualLoss<'_>,
        schedule: &NoiseSchedule,
        device: Device,
    ) -> Result<Self> {
        let n = images.size()[0].min(CONTROL_COUNT);
        let mut parts = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for chunk in images.narrow(0, 0, n).split(64, 0) {
                let x = codec.pixels_to_input(&chunk).to_device(device);
                let z = codec.to_model(&ae.encode(&x)?.mode())?;
                parts.push(z.to_kind(Kind::Float).to_device(Device::Cpu));
            }
            Ok(())
        })?;
        let z0 = Tensor::f_cat(&parts, 0)?;
        let times = gate_times(lpl, schedule)?;
        let k = times.size()[0];
        // evenly over the gate's set: sample i gets the time at position (i + 0.5) k / n
        let picks: Vec<i64> =
            (0..n).map(|i| (((i as f64 + 0.5) * k as f64 / n as f64) as i64).min(k - 1)).collect();
        let t = times.index_select(0, &Tensor::from_slice(&picks));
        let eps = {
            let _rng = GlobalRng::seeded(CONTROL_SEED);
            Tensor::f_randn(z0.size(), (Kind::Float, Device::Cpu))?
        };
        let labels = labels.map(|l| l.narrow(0, 0, n).to_kind(Kind::Int64));
        Ok(Self { z0, t, eps, labels })
    }

    /// The control values of `run` (its EMA weights) with the LPL configured by `config`
    /// (its gate replaced by keep-all: the set is inside the gate already; weight 1).
    pub fn evaluate(
        &self,
        run: &TrainedRun,
        config: &LplConfig,
        device: Device,
    ) -> Result<Control> {
        let lpl_config = LplConfig { gate: LplGate::All, weight: 1.0, ..config.clone() };
        let lpl = LatentPerceptualLoss::new(run.ae.as_ref(), run.codec.clone(), lpl_config)?;
        let schedule = &run.schedule;
        let p = run.parameterization;
        let n = self.z0.size()[0];
        let (mut lpl_sum, mut mse_sum) = (0.0, 0.0);
        for start in (0..n).step_by(64) {
            let rows = 64.min(n - start);
            let z0 = self.z0.narrow(0, start, rows).to_device(device);
            let eps = self.eps.narrow(0, start, rows).to_device(device);
            let t_cpu = self.t.narrow(0, start, rows);
            let t = t_cpu.to_device(device);
            let z_t = schedule.add_noise(&z0, &eps, &t)?;
            let cond = match &self.labels {
                Some(l) => Conditioning::labels(l.narrow(0, start, rows).to_device(device)),
                None => Conditioning::none(),
            };
            let (l, m) = tch::no_grad(|| -> Result<(f64, f64)> {
                let pred = run.model.forward(&z_t, &schedule.model_time(&t)?, &cond)?;
                let pred = pred.narrow(1, 0, z0.size()[1]).to_kind(Kind::Float);
                let target = p.target(schedule, &z0, &eps, &t)?;
                let mse = (&pred - target).square().mean(Kind::Float);
                let x0_hat = x0_from_prediction(&pred, &z_t, &t, p, schedule)?;
                let out = lpl.loss(&x0_hat, &z0, &t_cpu, schedule, p)?;
                Ok((f64::try_from(&out.total)?, f64::try_from(&mse)?))
            })?;
            lpl_sum += l * rows as f64;
            mse_sum += m * rows as f64;
        }
        Ok(Control {
            lpl: lpl_sum / n as f64,
            mse: mse_sum / n as f64,
            count: n,
            by_variant: BTreeMap::new(),
        })
    }
}

/// One flagged run: an LPL arm whose held-out LPL is not below its seed's MSE arm's.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlFlag {
    /// eps, v or flow.
    pub parameterization: String,
    /// The seed.
    pub seed: u64,
    /// The LPL arm.
    pub arm: String,
    /// Its held-out LPL.
    pub lpl: f64,
    /// The MSE arm's.
    pub mse_arm_lpl: f64,
    /// The LPL both were measured with: the arm's own variant, or `[lpl]`.
    pub measure: String,
}

impl std::fmt::Display for ControlFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seed {}: the `{}` arm's held-out LPL {} is not below the MSE arm's {} (both measured with `{}`): this run cannot speak for LPL",
            self.parameterization,
            self.seed,
            self.arm,
            significant(self.lpl),
            significant(self.mse_arm_lpl),
            self.measure
        )
    }
}

/// The flags of `rows` `(parameterization, seed, arm, control)`: every LPL-family arm (any
/// arm but `mse` and `pixel`) whose held-out LPL is not strictly below the `mse` arm's of
/// the same parameterisation and seed, both measured with the arm's own LPL when both
/// records have it, else with the configured one.
pub fn control_flags(rows: &[(String, u64, String, Control)]) -> Vec<ControlFlag> {
    let mut flags = Vec::new();
    for (param, seed, arm, c) in rows {
        if arm == "mse" || arm == "pixel" {
            continue;
        }
        let mse = rows.iter().find(|(p, s, a, _)| p == param && s == seed && a == "mse");
        let Some((_, _, _, m)) = mse else { continue };
        let (lpl, mse_arm_lpl, measure) = match (c.by_variant.get(arm), m.by_variant.get(arm)) {
            (Some(own), Some(theirs)) => (*own, *theirs, arm.clone()),
            _ => (c.lpl, m.lpl, "[lpl]".to_string()),
        };
        if lpl.partial_cmp(&mse_arm_lpl) != Some(std::cmp::Ordering::Less) {
            flags.push(ControlFlag {
                parameterization: param.clone(),
                seed: *seed,
                arm: arm.clone(),
                lpl,
                mse_arm_lpl,
                measure,
            });
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpl_autoencoder::{AutoencoderKl, AutoencoderKlConfig};

    /// The held-out set: the given (test-split) images' encodings exactly, every time inside
    /// the gate and spread over it, the same set on every construction.
    #[test]
    #[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
    fn the_set_is_held_out_and_inside_the_gate() {
        let _rng = GlobalRng::seeded(3);
        let config = AutoencoderKlConfig::preset("tiny").unwrap();
        let mut ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
        ae.set_requires_grad(false);
        let codec = ae.codec().clone();
        let images = Tensor::rand([10, 3, 16, 16], (Kind::Float, Device::Cpu));
        let labels = Tensor::arange(10, (Kind::Int64, Device::Cpu)).remainder(3);
        for (schedule, name) in [("dit", "discrete"), ("flow", "flow")] {
            let schedule = NoiseSchedule::preset(schedule).unwrap();
            // the paper preset's SNR gate (tau = 3: a minority of times)
            let lpl_config = LplConfig::preset("paper").unwrap();
            let lpl = LatentPerceptualLoss::new(&ae, codec.clone(), lpl_config).unwrap();
            let make = || {
                ControlSet::new(&ae, &codec, &images, Some(&labels), &lpl, &schedule, Device::Cpu)
                    .unwrap()
            };
            let set = make();
            assert_eq!(set.z0.size()[0], 10, "{name}");
            let expected = tch::no_grad(|| {
                codec.to_model(&ae.encode(&codec.pixels_to_input(&images)).unwrap().mode()).unwrap()
            });
            assert!(
                set.z0.allclose(&expected, 0.0, 0.0, false),
                "{name}: the test images' latents"
            );
            let kept = lpl.kept_indices(&set.t, &schedule).unwrap();
            assert_eq!(kept.len(), 10, "{name}: every time inside the gate");
            // and the gate is a real restriction: the whole range is not inside it
            let all = gate_times(&lpl, &schedule).unwrap();
            let n = schedule.num_train_timesteps();
            assert!(all.size()[0] < n, "{name}: the gate keeps {} of {n}", all.size()[0]);
            let distinct = set.t.unique_dim(0, true, false, false).0.size()[0];
            assert!(distinct >= 5, "{name}: times spread over the gate ({distinct} distinct)");
            let again = make();
            assert!(again.t.equal(&set.t) && again.eps.equal(&set.eps), "{name}: deterministic");
            assert!(set.labels.as_ref().unwrap().equal(&labels));
        }
    }

    fn row(p: &str, seed: u64, arm: &str, lpl: f64) -> (String, u64, String, Control) {
        (
            p.into(),
            seed,
            arm.into(),
            Control { lpl, mse: 0.1, count: 8, by_variant: BTreeMap::new() },
        )
    }

    #[test]
    fn flags_trip_when_the_lpl_arm_is_not_lower() {
        let rows = vec![
            row("eps", 0, "mse", 0.50),
            row("eps", 0, "lpl", 0.40),
            row("eps", 1, "mse", 0.50),
            row("eps", 1, "lpl", 0.50), // equal: as with weight 0, flagged
            row("eps", 1, "pixel", 0.60), // a control arm: never flagged
            row("v", 0, "mse", 0.30),
            row("v", 0, "lpl", f64::NAN), // not a number: flagged
        ];
        let flags = control_flags(&rows);
        assert_eq!(flags.len(), 2, "{flags:?}");
        assert_eq!((flags[0].parameterization.as_str(), flags[0].seed), ("eps", 1));
        assert!(flags[0].to_string().contains("not below the MSE arm's 0.50000"));
        assert_eq!(flags[1].parameterization, "v");
    }

    /// A variant that changes the measure is judged by its own LPL, on both sides: lower
    /// on the configured LPL but not on its own is flagged, and the other way round is not.
    #[test]
    fn a_variant_is_judged_by_its_own_lpl() {
        let with_own = |p: &str, seed: u64, arm: &str, lpl: f64, own: &[(&str, f64)]| {
            let (p, seed, arm, mut c) = row(p, seed, arm, lpl);
            c.by_variant = own.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            (p, seed, arm, c)
        };
        let rows = vec![
            with_own("v", 0, "mse", 100.0, &[("l2", 0.30)]),
            // far below on [lpl], but not below on its own measure: flagged
            with_own("v", 0, "l2", 1.0, &[("l2", 0.31)]),
            with_own("v", 1, "mse", 100.0, &[("l2", 0.30)]),
            // above on [lpl], below on its own: passes
            with_own("v", 1, "l2", 500.0, &[("l2", 0.29)]),
            // the base variant is judged on [lpl]
            with_own("v", 1, "lpl", 90.0, &[("l2", 0.99)]),
        ];
        let flags = control_flags(&rows);
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!((flags[0].seed, flags[0].arm.as_str()), (0, "l2"));
        assert_eq!((flags[0].lpl, flags[0].mse_arm_lpl), (0.31, 0.30));
        assert!(flags[0].to_string().contains("both measured with `l2`"), "{}", flags[0]);
        assert_eq!(rows[1].3.measured_as("l2"), 0.31);
        assert_eq!(rows[1].3.measured_as("lpl"), 1.0);
    }
}
