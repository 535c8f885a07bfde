//! Golden parity with diffusers 0.42.0 (fixtures: `fixtures/make_fixtures.py`, run on the
//! same torch 2.11.0).
//!
//! Tolerances, all max-abs in f32:
//! - tables, `add_noise`, `get_velocity`: 1e-6 (the same f32 torch ops; values are O(1));
//! - sampler trajectories: 1e-5 (the bound). Our step coefficients are computed in
//!   f64 from the same f32 tables where diffusers multiplies f32 0-d tensors, so results
//!   differ by a few ulps per step; Euler and Heun carry states up to sigma_max ~ 14.6.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;

use lpl_schedulers::{
    BetaSchedule, DiscreteConfig, FixedNoise, FlowConfig, NoiseSchedule, Parameterization,
    PreviousTimestep, Sampler, SamplerConfig, SamplerKind, ScheduleConfig, TimestepSpacing,
    TorchNoise,
};
use tch::{Kind, Tensor};

fn fixtures() -> HashMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers_schedulers.safetensors");
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max()).unwrap()
}

fn sd(rescale: bool) -> DiscreteConfig {
    DiscreteConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: BetaSchedule::ScaledLinear,
        rescale_zero_terminal_snr: rescale,
        ..DiscreteConfig::default()
    }
}

#[test]
fn beta_tables_match_diffusers() {
    let f = fixtures();
    let cases = [
        ("linear", DiscreteConfig::default()),
        ("scaled_linear", sd(false)),
        (
            "squaredcos_cap_v2",
            DiscreteConfig { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Default::default() },
        ),
        ("scaled_linear_zsnr", sd(true)),
    ];
    for (name, config) in cases {
        let s = lpl_schedulers::DiscreteSchedule::new(&config).unwrap();
        let e_b = max_abs(s.betas(), &f[&format!("betas/{name}")]);
        let e_ab = max_abs(s.alphas_cumprod(), &f[&format!("alphas_cumprod/{name}")]);
        assert!(e_b <= 1e-6 && e_ab <= 1e-6, "{name}: betas {e_b:e}, alphas_cumprod {e_ab:e}");
    }
}

#[test]
fn add_noise_and_velocity_match_diffusers() {
    let f = fixtures();
    let s = NoiseSchedule::new(&ScheduleConfig::Discrete(sd(false))).unwrap();
    let t = f["add_noise/timesteps"].to_kind(Kind::Int64);
    let (x0, eps) = (&f["add_noise/x0"], &f["add_noise/eps"]);
    let noisy = s.add_noise(x0, eps, &t).unwrap();
    assert!(max_abs(&noisy, &f["add_noise/out"]) <= 1e-6);
    let v = Parameterization::V.target(&s, x0, eps, &t).unwrap();
    assert!(max_abs(&v, &f["velocity/out"]) <= 1e-6);
}

/// The deterministic "model" of the fixture script.
fn model(x: &Tensor, t: &Tensor) -> Tensor {
    x * 0.8 + (t / 1000.0 * 0.1).view([-1, 1, 1, 1])
}

struct Case {
    schedule: ScheduleConfig,
    parameterization: Parameterization,
    config: SamplerConfig,
}

fn case(name: &str) -> Case {
    let parts: Vec<&str> = name.split('_').collect();
    if parts[0] == "flow" {
        let shift: f64 = parts[2].trim_start_matches("shift").parse().unwrap();
        return Case {
            schedule: ScheduleConfig::Flow(FlowConfig { shift, ..FlowConfig::default() }),
            parameterization: Parameterization::Flow,
            config: SamplerConfig::new(SamplerKind::FlowEuler, 10),
        };
    }
    let kind = match parts[0] {
        "ddpm" => SamplerKind::Ddpm,
        "ddim" => SamplerKind::Ddim,
        "euler" => SamplerKind::Euler,
        "heun" => SamplerKind::Heun,
        "dpmpp2m" => SamplerKind::DpmSolverPp2m,
        other => panic!("unknown sampler {other}"),
    };
    let parameterization =
        if parts[1] == "eps" { Parameterization::Eps } else { Parameterization::V };
    let spacing = match parts[2] {
        "leading" => TimestepSpacing::Leading,
        "linspace" => TimestepSpacing::Linspace,
        "trailing" => TimestepSpacing::Trailing,
        other => panic!("unknown spacing {other}"),
    };
    let mut config = SamplerConfig::new(kind, 10).with_spacing(spacing);
    if kind == SamplerKind::Ddim {
        config.eta = parts[3].trim_start_matches("eta").parse().unwrap();
        // diffusers' DDIM steps by N / steps; that equals the next grid point except for linspace.
        if spacing == TimestepSpacing::Linspace {
            config.ddim_previous = PreviousTimestep::DiffusersStride;
        }
    }
    Case {
        schedule: ScheduleConfig::Discrete(sd(name.ends_with("zsnr"))),
        parameterization,
        config,
    }
}

#[test]
fn samplers_match_diffusers_step_and_loop() {
    let f = fixtures();
    let mut names: Vec<&str> =
        f.keys().filter_map(|k| k.strip_suffix("/final")).collect::<Vec<_>>();
    names.sort();
    assert_eq!(names.len(), 39, "fixture cases: {names:?}");
    let mut report = Vec::new();
    for name in names {
        let c = case(name);
        let schedule = NoiseSchedule::new(&c.schedule).unwrap();
        let sampler = Sampler::new(&schedule, c.parameterization, &c.config).unwrap();
        let expected_t = Vec::<f32>::try_from(&f[&format!("{name}/timesteps")]).unwrap();
        let ours_t = sampler.timesteps();
        assert_eq!(
            ours_t.len(),
            expected_t.len(),
            "{name}: timesteps {ours_t:?} vs {expected_t:?}"
        );
        for (a, b) in ours_t.iter().zip(&expected_t) {
            assert!((a - b).abs() <= 1e-3, "{name}: timesteps {ours_t:?} vs {expected_t:?}");
        }
        let noise_key = format!("{name}/variance_noise");
        let mut source: Box<dyn lpl_schedulers::NoiseSource> = match f.get(&noise_key) {
            Some(all) => {
                let draws: Vec<Tensor> = (0..all.size()[0])
                    // DDPM draws no noise at t = 0; the fixture stores zeros there.
                    .filter(|&i| {
                        c.config.sampler != SamplerKind::Ddpm || expected_t[i as usize] > 0.0
                    })
                    .map(|i| all.get(i))
                    .collect();
                Box::new(FixedNoise::new(draws))
            }
            None => Box::new(TorchNoise),
        };
        let mut first: Option<Tensor> = None;
        let mut on_step = |i: usize, x: &Tensor| {
            if i == 0 {
                first = Some(x.copy());
            }
        };
        let mut m = model;
        let out = sampler
            .run(&f[&format!("{name}/noise")], &mut m, source.as_mut(), Some(&mut on_step))
            .unwrap();
        let e1 = max_abs(first.as_ref().unwrap(), &f[&format!("{name}/step1")]);
        let e = max_abs(&out, &f[&format!("{name}/final")]);
        report.push(format!("{name}: step1 {e1:.2e} final {e:.2e}"));
        assert!(e1 <= 1e-5 && e <= 1e-5, "{name}: step1 err {e1:e}, final err {e:e}");
    }
    println!("{}", report.join("\n"));
}
