//! Properties every schedule and parameterisation must have, and config validation.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_schedulers::{
    BetaSchedule, Branch, DiscreteConfig, FlowConfig, Guidance, NoiseSchedule, Parameterization,
    Sampler, SamplerConfig, SamplerKind, ScheduleConfig, ScheduleError, TimeSampler, TimeSampling,
    TorchNoise, min_snr_weights, schedule, snr_gate,
};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

const PARAMS: [Parameterization; 4] =
    [Parameterization::Eps, Parameterization::V, Parameterization::X0, Parameterization::Flow];

fn schedules() -> Vec<(&'static str, NoiseSchedule)> {
    let discrete = |beta_schedule, rescale| {
        NoiseSchedule::new(&ScheduleConfig::Discrete(DiscreteConfig {
            beta_schedule,
            rescale_zero_terminal_snr: rescale,
            ..DiscreteConfig::default()
        }))
        .unwrap()
    };
    vec![
        ("linear", discrete(BetaSchedule::Linear, false)),
        ("scaled_linear", NoiseSchedule::preset("sd15").unwrap()),
        ("cosine", discrete(BetaSchedule::SquaredcosCapV2, false)),
        ("linear_zsnr", discrete(BetaSchedule::Linear, true)),
        ("flow", NoiseSchedule::preset("flow").unwrap()),
        ("flow_shift3", NoiseSchedule::preset("sd3").unwrap()),
    ]
}

/// t covering the whole range, per schedule kind.
fn ts(schedule: &NoiseSchedule) -> Tensor {
    match schedule {
        NoiseSchedule::Discrete(_) => Tensor::from_slice(&[0i64, 1, 10, 250, 500, 750, 990, 999]),
        NoiseSchedule::Flow(_) => {
            Tensor::from_slice(&[1e-3f32, 0.01, 0.25, 0.5, 0.75, 0.99, 0.999])
        }
    }
}

#[test]
fn exact_targets_convert_back_to_z0_and_eps() {
    let _rng = GlobalRng::lock();
    for (name, s) in schedules() {
        let t = ts(&s);
        let b = t.size()[0];
        let z0 = Tensor::randn([b, 3, 4, 4], (Kind::Double, Device::Cpu));
        let eps = Tensor::randn([b, 3, 4, 4], (Kind::Double, Device::Cpu));
        let z_t = s.add_noise(&z0, &eps, &t).unwrap();
        let (alpha, _) = s.alpha_sigma(&t).unwrap();
        for p in PARAMS {
            if p.check(&s).is_err() {
                continue;
            }
            let target = p.target(&s, &z0, &eps, &t).unwrap();
            // eps-prediction cannot give x0 where alpha = 0 (zero terminal SNR at t = N-1).
            let keep = alpha.gt(0.0).view([-1, 1, 1, 1]);
            let zero = Tensor::zeros([1], (Kind::Double, Device::Cpu));
            let masked = |d: Tensor| f64::try_from(d.abs().where_self(&keep, &zero).max()).unwrap();
            let x0 = p.to_x0(&s, &target, &z_t, &t).unwrap();
            let err = masked(x0 - &z0);
            // 1e-5 (x2): f64, /alpha >= 5e-5: 1e-11; 1-ulp f32 sqrt: a^2+s^2 = 1 +- 3e-7: 1.5e-6
            assert!(err <= 1e-5, "{name}/{p}: x0 error {err:e}");
            let e = p.to_eps(&s, &target, &z_t, &t).unwrap();
            let err = masked(e - &eps);
            assert!(err <= 1e-5, "{name}/{p}: eps error {err:e}");
        }
    }
}

#[test]
fn f32_conversions_hold_where_alpha_is_not_tiny() {
    let _rng = GlobalRng::lock();
    let s = NoiseSchedule::preset("sd15").unwrap();
    let t = Tensor::from_slice(&[0i64, 100, 500, 999]); // alpha >= 0.068 on this schedule
    let z0 = Tensor::randn([4, 4, 8, 8], (Kind::Float, Device::Cpu));
    let eps = Tensor::randn([4, 4, 8, 8], (Kind::Float, Device::Cpu));
    let z_t = s.add_noise(&z0, &eps, &t).unwrap();
    for p in [Parameterization::Eps, Parameterization::V, Parameterization::X0] {
        let target = p.target(&s, &z0, &eps, &t).unwrap();
        let x0 = p.to_x0(&s, &target, &z_t, &t).unwrap();
        let err = f64::try_from((x0 - &z0).abs().max()).unwrap();
        // 1e-5: f32 rounding of z_t (|z| < 6: 2.4e-7) times 1/alpha <= 15 = 3.6e-6 (+1.5e-6 v)
        assert!(err <= 1e-5, "{p}: {err:e}");
    }
}

#[test]
fn mismatched_parameterizations_are_typed_errors() {
    let _rng = GlobalRng::lock();
    let discrete = NoiseSchedule::preset("dit").unwrap();
    let flow = NoiseSchedule::preset("flow").unwrap();
    assert!(matches!(
        Parameterization::Flow.check(&discrete),
        Err(ScheduleError::Unsupported {
            parameterization: Parameterization::Flow,
            schedule: "discrete"
        })
    ));
    assert!(matches!(
        Parameterization::V.check(&flow),
        Err(ScheduleError::Unsupported { parameterization: Parameterization::V, schedule: "flow" })
    ));
    let ddim = SamplerConfig::new(SamplerKind::Ddim, 10);
    assert!(matches!(
        Sampler::new(&flow, Parameterization::Flow, &ddim),
        Err(ScheduleError::SamplerMismatch { .. })
    ));
}

#[test]
fn snr_is_monotone_decreasing() {
    let _rng = GlobalRng::lock();
    for (name, s) in schedules() {
        let t = match &s {
            NoiseSchedule::Discrete(_) => Tensor::arange(1000, (Kind::Int64, Device::Cpu)),
            NoiseSchedule::Flow(_) => Tensor::linspace(1e-4, 1.0, 2000, (Kind::Float, Device::Cpu)),
        };
        let snr = Vec::<f32>::try_from(s.snr(&t).unwrap()).unwrap();
        assert!(snr.windows(2).all(|w| w[1] < w[0] || (w[1] == 0.0 && w[0] == 0.0)), "{name}");
        // continuous t between table entries for discrete schedules
        if let NoiseSchedule::Discrete(_) = s {
            let tc = Tensor::linspace(0.0, 999.0, 4001, (Kind::Float, Device::Cpu));
            let snr = Vec::<f32>::try_from(s.snr(&tc).unwrap()).unwrap();
            let bad: Vec<_> = snr
                .windows(2)
                .enumerate()
                .filter(|(_, w)| {
                    w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Less) && w[1] != w[0]
                })
                .map(|(i, w)| (i, w[0], w[1]))
                .take(5)
                .collect();
            assert!(bad.is_empty(), "{name} (continuous t): {bad:?}");
        }
    }
}

#[test]
fn continuous_t_agrees_with_the_table_at_integers() {
    let _rng = GlobalRng::lock();
    let s = NoiseSchedule::preset("sd15").unwrap();
    let ti = Tensor::from_slice(&[0i64, 3, 500, 999]);
    let (a, b) = (s.snr(&ti).unwrap(), s.snr(&ti.to_kind(Kind::Float)).unwrap());
    assert_eq!(Vec::<f32>::try_from(a).unwrap(), Vec::<f32>::try_from(b).unwrap());
}

#[test]
fn cosine_betas_are_positive_and_capped() {
    let _rng = GlobalRng::lock();
    // Integer division in `i / n` (a bug in public ports) gives betas of exactly 0 or 1.
    for n in [10, 1000, 4000] {
        let betas = schedule::cosine_betas(n, 0.999);
        assert!(betas.iter().all(|&b| b > 0.0 && b <= 0.999), "n = {n}: {:?}", &betas[..3]);
    }
    assert_eq!(*schedule::cosine_betas(1000, 0.999).last().unwrap(), 0.999);
}

#[test]
fn flow_quantities() {
    let _rng = GlobalRng::lock();
    let s = NoiseSchedule::preset("flow").unwrap();
    let t = Tensor::from_slice(&[0.25f32, 0.5]);
    assert_eq!(Vec::<f32>::try_from(s.snr(&t).unwrap()).unwrap(), vec![9.0, 1.0]);
    assert_eq!(Vec::<f32>::try_from(s.model_time(&t).unwrap()).unwrap(), vec![250.0, 500.0]);
    assert!((schedule::shift_time(3.0, 0.5) - 0.75).abs() < 1e-12); // host f64: 1.5 / 2 exactly
}

#[test]
fn min_snr_weights_have_the_published_forms() {
    let _rng = GlobalRng::lock();
    let gamma = 5.0;
    let s = NoiseSchedule::preset("sd15").unwrap();
    let t = Tensor::from_slice(&[0i64, 50, 300, 999]);
    let snr = s.snr(&t).unwrap().to_kind(Kind::Double);
    let clipped = snr.clamp_max(gamma);
    let check = |p: Parameterization, expected: Tensor| {
        let w = min_snr_weights(&s, p, &t, gamma).unwrap().to_kind(Kind::Double);
        let err = f64::try_from(((&w - &expected) / &expected).abs().max()).unwrap();
        // 1e-5 rel: (s/a)^2 from 1-ulp (MKL) f32 sqrts vs the f64 ratio of the same snr: ~5e-7
        assert!(err < 1e-5, "{p}: {w} vs {expected}");
    };
    check(Parameterization::Eps, &clipped / &snr);
    check(Parameterization::V, &clipped / (&snr + 1.0));
    check(Parameterization::X0, clipped.shallow_clone());
    let flow = NoiseSchedule::preset("flow").unwrap();
    let tf = Tensor::from_slice(&[0.1f32, 0.5, 0.9]);
    let w =
        Vec::<f32>::try_from(min_snr_weights(&flow, Parameterization::Flow, &tf, gamma).unwrap())
            .unwrap();
    // snr(0.1) = 81 -> 5 * 0.01; snr(0.5) = 1 -> 0.25; snr(0.9) = 1/81 -> 0.81/81
    let expected = [0.05f32, 0.25, 0.01];
    for (a, b) in w.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6, "{w:?}"); // <= 0.25, f32 basic ops only: a few ulps, 1e-7
    }
    assert!(matches!(
        min_snr_weights(&s, Parameterization::Eps, &t, -1.0),
        Err(ScheduleError::InvalidConfig { field: "min_snr_gamma", .. })
    ));
}

#[test]
fn snr_gate_keeps_low_noise_samples() {
    let _rng = GlobalRng::lock();
    let s = NoiseSchedule::preset("sd15").unwrap();
    let t = Tensor::from_slice(&[0i64, 150, 250, 999]);
    let gate = Vec::<bool>::try_from(snr_gate(&s, &t, 3.0).unwrap()).unwrap();
    // LPL.md: tau = 3 is about t < 200 on this schedule
    assert_eq!(gate, vec![true, true, false, false]);
}

#[test]
fn time_sampling_is_seeded_and_resumable() {
    let _rng = GlobalRng::lock();
    let d = NoiseSchedule::preset("sd15").unwrap();
    let f = NoiseSchedule::preset("sd3").unwrap();
    let kinds = [
        TimeSampling::UniformDiscrete,
        TimeSampling::UniformContinuous,
        TimeSampling::LogitNormal { mean: 0.0, std: 1.0 },
    ];
    for kind in kinds {
        for s in [&d, &f] {
            let mut a = TimeSampler::new(kind.clone(), 42).unwrap();
            let mut b = TimeSampler::new(kind.clone(), 42).unwrap();
            let ta = a.sample(s, 64, Device::Cpu).unwrap();
            assert_eq!(ta, b.sample(s, 64, Device::Cpu).unwrap());
            let mut resumed = TimeSampler::with_state(kind.clone(), a.state()).unwrap();
            assert_eq!(
                a.sample(s, 8, Device::Cpu).unwrap(),
                resumed.sample(s, 8, Device::Cpu).unwrap()
            );
            let mut c = TimeSampler::new(kind.clone(), 43).unwrap();
            assert_ne!(ta, c.sample(s, 64, Device::Cpu).unwrap());
            let v = Vec::<f64>::try_from(ta.to_kind(Kind::Double)).unwrap();
            let hi = if matches!(s, NoiseSchedule::Flow(_)) { 1.0 } else { 999.0 };
            assert!(v.iter().all(|&x| x >= 0.0 && x <= hi), "{kind:?}: {v:?}");
        }
    }
    // uniform discrete covers [0, N) evenly: mean (N-1)/2 within 3 standard errors
    let mut u = TimeSampler::new(TimeSampling::UniformDiscrete, 1).unwrap();
    let t = u.sample(&d, 20_000, Device::Cpu).unwrap();
    assert_eq!(t.kind(), Kind::Int64);
    let mean = f64::try_from(t.to_kind(Kind::Double).mean(Kind::Double)).unwrap();
    assert!((mean - 499.5).abs() < 3.0 * 288.7 / (20_000f64).sqrt(), "{mean}");
    // logit-normal(0, 1) with shift 3 on flow: median of shift(sigmoid(n)) = shift(0.5) = 0.75
    let mut ln = TimeSampler::new(TimeSampling::LogitNormal { mean: 0.0, std: 1.0 }, 2).unwrap();
    let t = ln.sample(&f, 20_001, Device::Cpu).unwrap();
    let median = f64::try_from(t.median()).unwrap();
    assert!((median - 0.75).abs() < 0.01, "{median}");
}

#[test]
fn invalid_configs_name_the_field() {
    let _rng = GlobalRng::lock();
    let err = |text: &str| -> String {
        match toml::from_str::<ScheduleConfig>(text) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().unwrap_err().to_string(),
        }
    };
    assert!(err("kind = \"discrete\"\nbeta_start = -0.001").contains("`beta_start`"));
    assert!(err("kind = \"discrete\"\nbeta_start = 0.01\nbeta_end = 0.001").contains("`beta_end`"));
    assert!(err("kind = \"discrete\"\nnum_train_timesteps = 0").contains("`num_train_timesteps`"));
    assert!(err("kind = \"flow\"\nshift = 0.0").contains("`shift`"));
    let unknown = err("kind = \"discrete\"\nbeta_strat = 0.001");
    assert!(unknown.contains("unknown field `beta_strat`"), "{unknown}");
    let s = NoiseSchedule::preset("sd15").unwrap();
    let sampler = |text: &str| -> String {
        match toml::from_str::<SamplerConfig>(text) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate(&s).unwrap_err().to_string(),
        }
    };
    assert!(sampler("sampler = \"ddim\"\nsteps = 0").contains("`steps`"));
    assert!(sampler("sampler = \"ddim\"\nsteps = 1001").contains("`steps`"));
    assert!(sampler("sampler = \"ddim\"\neta = -1.0").contains("`eta`"));
    assert!(sampler("sampler = \"ddim\"\nsteps = 10\nstep = 3").contains("step"));
    let g: Guidance = toml::from_str("scale = 4.0\ninterval = [700.0, 100.0]").unwrap();
    assert!(g.validate().unwrap_err().to_string().contains("`interval`"));
    assert!(ScheduleConfig::preset("sd2").unwrap_err().to_string().contains("sd15"));
}

#[test]
fn presets_and_toml_round_trip() {
    let _rng = GlobalRng::lock();
    for name in schedule::SCHEDULE_PRESETS {
        let config = ScheduleConfig::preset(name).unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<ScheduleConfig>(&text).unwrap(), config, "{name}:\n{text}");
        NoiseSchedule::new(&config).unwrap();
    }
    let sdxl = ScheduleConfig::preset("sdxl").unwrap();
    assert_eq!(
        sdxl,
        ScheduleConfig::Discrete(DiscreteConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            ..DiscreteConfig::default()
        })
    );
    assert_eq!(
        ScheduleConfig::preset("sd3").unwrap(),
        ScheduleConfig::Flow(FlowConfig { shift: 3.0, num_train_timesteps: 1000 })
    );
}

#[test]
fn guidance_applies_to_every_channel_and_respects_the_interval() {
    let _rng = GlobalRng::lock();
    let g = Guidance { scale: 3.0, interval: Some([200.0, 800.0]), channels: None };
    // cond and uncond differ on every one of 4 channels
    let cond = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 4, 1, 1]);
    let uncond = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 2.0]).view([1, 4, 1, 1]);
    let out = Vec::<f32>::try_from(g.combine(&cond, &uncond).flatten(0, -1)).unwrap();
    assert_eq!(out, vec![3.0, 4.0, 7.0, 8.0]);
    // DiT's published sampling: the first 3 channels guided, the 4th the conditional one
    let dit = Guidance { channels: Some(3), ..g.clone() };
    let out = Vec::<f32>::try_from(dit.combine(&cond, &uncond).flatten(0, -1)).unwrap();
    assert_eq!(out, vec![3.0, 4.0, 7.0, 4.0]);
    assert!(Guidance { channels: Some(0), ..g.clone() }.validate().is_err());
    let mut batched_calls = 0;
    {
        // conditional rows predict 1, unconditional rows 0
        let mut model = g.wrap(|x: &Tensor, _t: &Tensor, branch: Branch| {
            let b = x.size()[0];
            Ok(match branch {
                Branch::Conditional => x.ones_like(),
                Branch::Both => {
                    batched_calls += 1;
                    Tensor::cat(
                        &[
                            x.narrow(0, 0, b / 2).ones_like(),
                            x.narrow(0, b / 2, b / 2).zeros_like(),
                        ],
                        0,
                    )
                }
            })
        });
        let x = Tensor::zeros([2, 4, 2, 2], (Kind::Float, Device::Cpu));
        for (t, expected) in [(900.0, 1.0), (500.0, 3.0), (100.0, 1.0)] {
            let out = model(&x, &Tensor::full([2], t, (Kind::Float, Device::Cpu))).unwrap();
            assert_eq!(out.size(), x.size());
            assert_eq!(f64::try_from(out.min()).unwrap(), expected, "t = {t}");
            assert_eq!(f64::try_from(out.max()).unwrap(), expected, "t = {t}");
        }
    }
    assert_eq!(batched_calls, 1, "the unconditional rows run only inside the interval");
    // the model's error ends the sampling, its message kept in the source chain
    let schedule = NoiseSchedule::preset("dit").unwrap();
    let sampler =
        Sampler::new(&schedule, Parameterization::Eps, &SamplerConfig::new(SamplerKind::Ddim, 3))
            .unwrap();
    let mut failing = |_: &Tensor, _: &Tensor| -> Result<Tensor, lpl_schedulers::ModelError> {
        Err("out of memory in block 3".into())
    };
    let err = sampler
        .run(
            &Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu)),
            &mut failing,
            &mut TorchNoise,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, ScheduleError::Model(_)));
    let source = std::error::Error::source(&err).map(|e| e.to_string());
    assert_eq!(source.as_deref(), Some("out of memory in block 3"));
}
