//! Learned variance against its references (fixtures: `fixtures/make_learned_variance_fixtures.py`
//! on torch 2.11.0 and diffusers 0.42.0): DDPM sampling with `variance_type =
//! "learned_range"` against diffusers' own loop, and the variational bound term against
//! improved DDPM / ADM / DiT's `_vb_terms_bpd`.
//!
//! Tolerances from the numerics (f32, u = 6e-8):
//! - DDPM loops: 1e-5 max-abs after 3 or 10 steps, as for the other samplers
//!   (diffusers_parity.rs), plus one roundoff of the state per step for 250 steps: our step
//!   coefficients are f64 from the same f32 table, diffusers' f32 0-d tensors; the learned
//!   standard deviation `exp(0.5 log_var)` adds one exp and one log of O(1) arguments per
//!   step (a few ulps of a step's noise term, which is at most ~0.14 in size).
//! - The bound: ADM's tables come from f64 `np.linspace` betas, ours from diffusers' f32
//!   betas converted to f64 (relative differences up to ~1e-7 in beta, ~1e-6 in
//!   `1 - alpha_bar` near t = 0 where it is ~1e-4). The KL divides squared mean differences
//!   by a posterior variance as small as 1e-4 at t = 1 and subtracts O(1) log terms, so a
//!   relative 1e-6 on the variance and a few ulps on the means move it by ~1e-5 relative;
//!   the decoder NLL (t = 0) takes logs of CDF differences over bins of 2/255 against
//!   standard deviations of ~0.01: no cancellation beyond that. Bound: 2e-4 relative plus
//!   1e-6 absolute (bits per dimension are O(1e-3 .. 10)).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;

use lpl_schedulers::learned_variance::split_prediction;
use lpl_schedulers::{
    DiscreteConfig, DiscreteSchedule, FixedNoise, NoiseSchedule, Parameterization, Sampler,
    SamplerConfig, SamplerKind, TimestepSpacing, VarianceTables,
};
use tch::{Device, Kind, Tensor};

fn fixtures() -> HashMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/learned_variance.safetensors");
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max()).unwrap()
}

/// The fixture's model: `[0.8 x + 0.1 t / 1000, tanh(x + t / 1000 - 0.5)]` on channels.
fn model(x: &Tensor, t: &Tensor) -> Tensor {
    let t = (t / 1000.0).view([-1, 1, 1, 1]);
    Tensor::cat(&[x * 0.8 + &t * 0.1, (x + &t - 0.5).tanh()], 1)
}

#[test]
fn ddpm_learned_range_matches_diffusers_loop() {
    let f = fixtures();
    let cases = [
        ("ddpm_learned_eps_leading_3", Parameterization::Eps, TimestepSpacing::Leading, 3),
        ("ddpm_learned_eps_trailing_10", Parameterization::Eps, TimestepSpacing::Trailing, 10),
        ("ddpm_learned_v_leading_10", Parameterization::V, TimestepSpacing::Leading, 10),
        ("ddpm_learned_eps_leading_250", Parameterization::Eps, TimestepSpacing::Leading, 250),
    ];
    let schedule =
        NoiseSchedule::Discrete(DiscreteSchedule::new(&DiscreteConfig::default()).unwrap());
    for (name, p, spacing, steps) in cases {
        let config = SamplerConfig::new(SamplerKind::Ddpm, steps).with_spacing(spacing);
        let sampler = Sampler::new(&schedule, p, &config).unwrap();
        let ts = Vec::<f32>::try_from(&f[&format!("{name}/timesteps")]).unwrap();
        assert_eq!(sampler.timesteps(), ts, "{name}: timesteps");
        let all = &f[&format!("{name}/variance_noise")];
        let draws = (0..all.size()[0]).filter(|&i| ts[i as usize] > 0.0).map(|i| all.get(i));
        let mut source = FixedNoise::new(draws.collect());
        let mut first = None;
        let mut on_step = |i: usize, x: &Tensor| {
            if i == 0 {
                first = Some(x.copy());
            }
        };
        let mut m = |x: &Tensor, t: &Tensor| Ok(model(x, t));
        let out = sampler
            .run(&f[&format!("{name}/noise")], &mut m, &mut source, Some(&mut on_step))
            .unwrap();
        let e1 = max_abs(first.as_ref().unwrap(), &f[&format!("{name}/step1")]);
        let e = max_abs(&out, &f[&format!("{name}/final")]);
        // rounding adds up over a long loop: 1e-5 plus a linear budget of one unit roundoff
        // of the largest state (|x| <= 4) per step (the update contracts older errors, so
        // this over-counts)
        let bound = 1e-5 + steps as f64 * 4.0 * f64::from(f32::EPSILON) / 2.0;
        assert!(e1 <= 1e-5 && e <= bound, "{name}: step1 err {e1:e}, final err {e:e} > {bound:e}");

        // the learned variance is used: the fixed small one gives another trajectory
        let fixed = SamplerConfig { learned_variance: false, ..config.clone() };
        let sampler = Sampler::new(&schedule, p, &fixed).unwrap();
        let draws = (0..all.size()[0]).filter(|&i| ts[i as usize] > 0.0).map(|i| all.get(i));
        let mut source = FixedNoise::new(draws.collect());
        let out_fixed =
            sampler.run(&f[&format!("{name}/noise")], &mut m, &mut source, None).unwrap();
        assert!(max_abs(&out_fixed, &out) > 1e-3, "{name}: learned_variance = false ignored");
    }
}

#[test]
fn deterministic_samplers_ignore_the_variance_half() {
    let schedule =
        NoiseSchedule::Discrete(DiscreteSchedule::new(&DiscreteConfig::default()).unwrap());
    let noise = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
    for kind in [SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::DpmSolverPp2m] {
        let sampler =
            Sampler::new(&schedule, Parameterization::Eps, &SamplerConfig::new(kind, 5)).unwrap();
        let mut with_variance = |x: &Tensor, t: &Tensor| Ok(model(x, t));
        let mut mean_only = |x: &Tensor, t: &Tensor| Ok(model(x, t).narrow(1, 0, 3));
        let mut none = lpl_schedulers::TorchNoise;
        let a = sampler.run(&noise, &mut with_variance, &mut none, None).unwrap();
        let b = sampler.run(&noise, &mut mean_only, &mut none, None).unwrap();
        assert_eq!(max_abs(&a, &b), 0.0, "{kind:?}");
    }
    // a prediction with neither C nor 2C channels is refused, naming both
    let err = split_prediction(&Tensor::zeros([1, 5, 2, 2], (Kind::Float, Device::Cpu)), 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 channels") && err.contains("3 (or 6"), "{err}");
}

fn close(ours: &Tensor, reference: &Tensor, rel: f64, abs: f64) -> (bool, f64) {
    let diff = (ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double)).abs();
    let bound = reference.to_kind(Kind::Double).abs() * rel + abs;
    let ok = bool::try_from(diff.le_tensor(&bound).all()).unwrap();
    (ok, f64::try_from(diff.max()).unwrap())
}

#[test]
fn variational_bound_matches_improved_ddpm() {
    let f = fixtures();
    let schedule = DiscreteSchedule::new(&DiscreteConfig::default()).unwrap();
    let tables = VarianceTables::new(&schedule, Device::Cpu).unwrap();
    let t = f["vlb/t"].to_kind(Kind::Int64);
    let (x0, x_t) = (&f["vlb/x0"], &f["vlb/x_t"]);
    let (mean, log_var) = tables.posterior(x0, x_t, &t).unwrap();
    let (ok, e) = close(&mean, &f["vlb/posterior_mean"], 1e-5, 1e-6);
    assert!(ok, "posterior mean: max err {e:e}");
    let (ok, e) = close(&log_var, &f["vlb/posterior_log_variance"], 1e-5, 1e-6);
    assert!(ok, "posterior log-variance: max err {e:e}");
    let model_log_var = tables.model_log_variance(&f["vlb/v"], &t).unwrap();
    let (ok, e) = close(&model_log_var, &f["vlb/model_log_variance"], 1e-5, 1e-6);
    assert!(ok, "model log-variance: max err {e:e}");

    let s = NoiseSchedule::Discrete(schedule.clone());
    let x0_hat = Parameterization::Eps.to_x0(&s, &f["vlb/eps_hat"], x_t, &t).unwrap();
    let vb = tables.vlb_bits_per_dim(x0, x_t, &t, &x0_hat, &f["vlb/v"]).unwrap();
    let expected = &f["vlb/bits_per_dim"];
    let (ok, e) = close(&vb, expected, 2e-4, 1e-6);
    assert!(ok, "bits per dim: ours {vb:?} reference {expected:?} (max err {e:e})");
    // both branches are exercised: the decoder NLL at t = 0 and the KL elsewhere
    assert_eq!(i64::try_from(t.eq(0).sum(Kind::Int64)).unwrap(), 2);

    // the exact posterior mean and log-variance bound nothing: KL = 0 for t > 0
    let v_exact = Tensor::full_like(x0, -1.0);
    let vb = tables.vlb_bits_per_dim(x0, x_t, &t, x0, &v_exact).unwrap();
    let positive = t.gt(0);
    assert!(f64::try_from(vb.masked_select(&positive).abs().max()).unwrap() < 1e-5);

    // floating-point times are refused with a message saying what to configure
    let err = tables.posterior(x0, x_t, &t.to_kind(Kind::Float)).unwrap_err().to_string();
    assert!(err.contains("uniform_discrete"), "{err}");
}
