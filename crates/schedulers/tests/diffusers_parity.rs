//! Golden parity with diffusers 0.42.0 (fixtures: `fixtures/make_fixtures.py`, run on the
//! same torch 2.11.0).
//!
//! Why the bounds hold on any x86-64 CPU, not only the one that wrote the fixtures: the
//! last bits of libtorch's CPU results depend on the machine. Its f32/f64 `sqrt` (and `exp`,
//! `log`, ...) go through MKL's vector maths, which is within 1 ulp but not correctly rounded
//! and dispatches on the CPU by itself (`MKL_ENABLE_INSTRUCTIONS`, not `ATEN_CPU_CAPABILITY`);
//! `linspace` moves a last bit where the compiler contracted `start + step * i` into an FMA.
//! So every bound below is a rounding budget argued from f32 epsilon (u = 2^-24 = 6e-8) and
//! the conditioning of the computation, with room for a few ulps on each side:
//! - tables of well-conditioned schedules, `add_noise`, `get_velocity`: 1e-6 max-abs on values
//!   O(1) (about 8 ulps; each entry is a handful of f32 ops on O(1) numbers, and the
//!   cumulative product runs in an f64 accumulator and rounds once);
//! - the zero-terminal-SNR table: a per-entry bound from its conditioning
//!   ([`ZsnrConditioning`]), and the algorithm itself in f64 against diffusers' f64;
//! - sampler trajectories: 1e-5 max-abs. Our step coefficients are computed in f64 from the
//!   same f32 tables where diffusers multiplies f32 0-d tensors, so results differ by a few
//!   ulps per step over 10 steps of contracting updates; Euler and Heun carry states up to
//!   sigma_max ~ 14.6, where 1e-5 is still 11 ulps (ulp(16) = 1.9e-6 / 2).

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
    ];
    for (name, config) in cases {
        let s = lpl_schedulers::DiscreteSchedule::new(&config).unwrap();
        let e_b = max_abs(s.betas(), &f[&format!("betas/{name}")]);
        let e_ab = max_abs(s.alphas_cumprod(), &f[&format!("alphas_cumprod/{name}")]);
        // 1e-6 on O(1) values: see the header (well-conditioned, about 8 ulps)
        assert!(e_b <= 1e-6 && e_ab <= 1e-6, "{name}: betas {e_b:e}, alphas_cumprod {e_ab:e}");
    }
}

fn host(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

/// Unit roundoff of f32 and f64.
const U32: f64 = f32::EPSILON as f64 / 2.0;
const U64: f64 = f64::EPSILON / 2.0;

/// Relative error budget of each `sqrt(alpha_bar_j)`, in units of u, when two machines
/// compute the same table: 4u for two `sqrt`s each within 1 ulp (2u) of the exact root
/// (MKL's), 8u for up to four `1 - beta` entries whose last bit moved with `linspace`'s FMA
/// (the DEFAULT and AVX2 kernels give 4 such flips, 2u net in alpha_bar), doubled.
const SQRT_ULPS: f64 = 24.0;

/// The conditioning of the zero-terminal-SNR rescale of `betas` (f64), for a rounding budget
/// in which every `sqrt(alpha_bar_j)` may differ by `SQRT_ULPS * u` relative between the two
/// evaluations compared.
///
/// With `s_j = sqrt(alpha_bar_j)` and `d_j = s_j - s_{N-1}`: `beta_i = 1 - (d_i / d_{i-1})^2`
/// (the scale cancels), and `|delta d_j| <= SQRT_ULPS u (s_j + s_{N-1}) + 2u d_j` (the two
/// roots, then the subtraction and the scaling roundings).
struct ZsnrConditioning {
    s: Vec<f64>,
    u: f64,
}

impl ZsnrConditioning {
    fn new(betas: &[f64], u: f64) -> Self {
        let mut ab = 1.0;
        let s = betas
            .iter()
            .map(|b| {
                ab *= 1.0 - b;
                f64::sqrt(ab)
            })
            .collect();
        Self { s, u }
    }

    /// `|delta d_j| / d_j`.
    fn e(&self, j: usize) -> f64 {
        let last = self.s[self.s.len() - 1];
        let d = self.s[j] - last;
        (SQRT_ULPS * self.u * (self.s[j] + last) + 2.0 * self.u * d) / d
    }

    /// First-order bound on `|delta beta_i|` given the exact rescaled betas `zsnr`: the
    /// square doubles relative errors, the division and `1 - x` add a rounding each, so
    /// `alpha_i (2 e_i + 2 e_{i-1} + 2u) + u`. Entry 0 is `1 - (d_0 * s_0 / d_0)^2`, where
    /// `e_0` enters through the scale too; the last entry is exactly 1 on any machine
    /// (`d_{N-1} = 0` exactly).
    fn beta_bounds(&self, zsnr: &[f64]) -> Vec<f64> {
        let (n, u) = (self.s.len(), self.u);
        (0..n)
            .map(|i| {
                let alpha = 1.0 - zsnr[i];
                match i {
                    _ if i == n - 1 => u,
                    0 => alpha * (4.0 * self.e(0) + 2.0 * SQRT_ULPS * u + 4.0 * u) + u,
                    _ => alpha * (2.0 * self.e(i) + 2.0 * self.e(i - 1) + 2.0 * u) + u,
                }
            })
            .collect()
    }

    /// Bound on `|delta alpha_bar_i|` for `alpha_bar = cumprod(1 - beta)` near `ab`: the
    /// product telescopes to `(d_i s_0 / d_0)^2`, so the beta errors do not add up; the
    /// relative error is `2 e_i + 2 e_0 + 2 SQRT_ULPS u` plus one rounding per factor.
    fn alpha_bar_bound(&self, i: usize, ab: f64) -> f64 {
        let u = self.u;
        let rel = 2.0 * self.e(i) + 2.0 * self.e(0) + 2.0 * SQRT_ULPS * u;
        ab * (rel + 4.0 * (i + 1) as f64 * u) + u
    }
}

/// The zero-terminal-SNR table, whose last entries amplify the last bits of `sqrt` about
/// 300-fold: entry by entry within the bounds of [`ZsnrConditioning`] of diffusers' f32
/// table (the one written on the fixture machine).
#[test]
fn zero_terminal_snr_table_within_its_conditioning_bound() {
    let f = fixtures();
    let exact = host(&f["f64/betas/scaled_linear_zsnr"]);
    let cond = ZsnrConditioning::new(&host(&f["f64/betas/scaled_linear"]), U32);
    let bounds = cond.beta_bounds(&exact);
    // the bound is a real test: every beta is pinned to better than 2% of its value (a
    // wrong rescale, e.g. without the square, is off by tens of percent)
    for (i, (b, e)) in bounds.iter().zip(&exact).enumerate() {
        assert!(*b < 0.02 * e, "bound {b:e} at {i} for beta {e:e}");
    }

    let s = lpl_schedulers::DiscreteSchedule::new(&sd(true)).unwrap();
    let (ours, theirs) = (host(s.betas()), host(&f["betas/scaled_linear_zsnr"]));
    for (i, ((a, b), tol)) in ours.iter().zip(&theirs).zip(&bounds).enumerate() {
        assert!((a - b).abs() <= *tol, "beta[{i}]: ours {a:e}, diffusers {b:e}, bound {tol:e}");
    }
    let ab_ours = host(s.alphas_cumprod());
    let ab_theirs = host(&f["alphas_cumprod/scaled_linear_zsnr"]);
    // the last entry, 0 on both sides, is checked exactly below
    for (i, (a, b)) in ab_ours.iter().zip(&ab_theirs).enumerate().take(ab_ours.len() - 1) {
        let tol = cond.alpha_bar_bound(i, *b);
        assert!((a - b).abs() <= tol, "alphas_cumprod[{i}]: ours {a:e}, diffusers {b:e}");
    }
    assert_eq!(ab_ours[ab_ours.len() - 1], 0.0, "zero terminal SNR");
}

/// The rescale itself, in f64 on both sides (diffusers' function on the fixture's f64 betas,
/// ours on the same betas): the bound above with f64's u, i.e. at most about 1e-13.
#[test]
fn zero_terminal_snr_rescale_matches_diffusers_in_f64() {
    let f = fixtures();
    let betas = &f["f64/betas/scaled_linear"];
    assert_eq!(betas.kind(), Kind::Double);
    let ours = host(&lpl_schedulers::schedule::rescale_zero_terminal_snr(betas).unwrap());
    let theirs = host(&f["f64/betas/scaled_linear_zsnr"]);
    let bound = ZsnrConditioning::new(&host(betas), U64).beta_bounds(&theirs);
    for (i, ((a, b), tol)) in ours.iter().zip(&theirs).zip(&bound).enumerate() {
        assert!((a - b).abs() <= *tol, "beta[{i}]: ours {a:e}, diffusers {b:e}, bound {tol:e}");
    }
    assert!(bound.iter().all(|&b| b < 1e-12));
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
    // `..._steps7`: another step count than the fixture script's 10
    let steps =
        parts.iter().find_map(|p| p.strip_prefix("steps")).map_or(10, |s| s.parse().unwrap());
    let mut config = SamplerConfig::new(kind, steps).with_spacing(spacing);
    if kind == SamplerKind::Ddim {
        config.eta = parts[3].trim_start_matches("eta").parse().unwrap();
        // the default previous-timestep rule is diffusers' (t - N // steps) for every spacing
        // the default previous-timestep rule is diffusers' (t - N // steps) for every spacing
        assert_eq!(config.ddim_previous, PreviousTimestep::DiffusersStride);
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
    assert_eq!(names.len(), 40, "fixture cases: {names:?}");
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
        let mut m = |x: &Tensor, t: &Tensor| Ok(model(x, t));
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
