//! End-to-end sampling of a 2-D mixture of Gaussians with its exact (analytic) denoiser: the
//! samples' mean and covariance must match the data's.
//!
//! Data: 0.3 N((-2, 0), 0.5^2 I) + 0.7 N((1.5, 1), 0.3^2 I), as tensors (B, 2, 1, 1).
//! With 20,000 samples the standard errors are about 0.013 on the mean and 0.03 on the
//! covariance entries (variances up to 2.6); tolerances are 0.06 and 0.15, which leaves room
//! for the samplers' discretisation error at the stated step counts and still catches a
//! wrong sign, scale or missing step. On another CPU only ulps move (MKL/Sleef exp, log, sqrt;
//! torch's AVX2 or scalar Box-Muller): ~1e-6 per sample, far below one standard error.
//!
//! Discrete samplers run on the DiT linear schedule, whose terminal alpha is 0.006: starting
//! from pure noise then biases the sample mean by about alpha * sqrt(var) * mean = 0.005. On
//! the SD scaled-linear schedule (terminal alpha 0.068) that bias is about 0.05-0.07, a real
//! property of non-zero terminal SNR (Lin et al. 2023), not a sampler error.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_schedulers::{
    NoiseSchedule, Parameterization, Sampler, SamplerConfig, SamplerKind, TorchNoise,
};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

const WEIGHTS: [f64; 2] = [0.3, 0.7];
const MEANS: [[f64; 2]; 2] = [[-2.0, 0.0], [1.5, 1.0]];
const STDS: [f64; 2] = [0.5, 0.3];

fn data_moments() -> ([f64; 2], [[f64; 2]; 2]) {
    let mut mean = [0.0; 2];
    let mut second = [[0.0; 2]; 2];
    for k in 0..2 {
        for i in 0..2 {
            mean[i] += WEIGHTS[k] * MEANS[k][i];
            for j in 0..2 {
                let diag = if i == j { STDS[k] * STDS[k] } else { 0.0 };
                second[i][j] += WEIGHTS[k] * (diag + MEANS[k][i] * MEANS[k][j]);
            }
        }
    }
    let mut cov = second;
    for i in 0..2 {
        for j in 0..2 {
            cov[i][j] -= mean[i] * mean[j];
        }
    }
    (mean, cov)
}

/// `E[x0 | z]` for `z = a x0 + s eps`, per sample; z: (B, 2, 1, 1), a, s: (B,).
fn posterior_mean(z: &Tensor, a: &Tensor, s: &Tensor) -> Tensor {
    let z = z.to_kind(Kind::Double).view([-1, 2]);
    let a = a.to_kind(Kind::Double).view([-1, 1]);
    let s2 = s.to_kind(Kind::Double).square().view([-1, 1]);
    let mut logits = Vec::new();
    let mut means = Vec::new();
    for k in 0..2 {
        let mu = Tensor::from_slice(&MEANS[k]).view([1, 2]);
        let var = a.square() * STDS[k] * STDS[k] + &s2; // (B, 1)
        let diff = &z - &a * &mu;
        let logit = diff.square().sum_dim_intlist(1, true, Kind::Double) / (&var * -2.0)
            - var.log()
            + WEIGHTS[k].ln();
        logits.push(logit);
        means.push(&mu + &a * (STDS[k] * STDS[k]) / &var * diff);
    }
    let resp = Tensor::cat(&logits, 1).softmax(1, Kind::Double); // (B, 2)
    let x0 = means[0].shallow_clone() * resp.narrow(1, 0, 1)
        + means[1].shallow_clone() * resp.narrow(1, 1, 1);
    x0.view([-1, 2, 1, 1]).to_kind(Kind::Float)
}

/// The exact model in parameterisation `p` for `schedule`.
fn exact_model(
    schedule: &NoiseSchedule,
    p: Parameterization,
) -> impl FnMut(&Tensor, &Tensor) -> Result<Tensor, lpl_schedulers::ModelError> + '_ {
    move |z: &Tensor, t_model: &Tensor| {
        let t = match schedule {
            NoiseSchedule::Discrete(_) => t_model.shallow_clone(),
            NoiseSchedule::Flow(_) => t_model / schedule.num_train_timesteps() as f64,
        };
        let (a, s) = schedule.alpha_sigma(&t).unwrap();
        let x0 = posterior_mean(z, &a, &s);
        let eps = (z - &x0 * a.view([-1, 1, 1, 1])) / s.view([-1, 1, 1, 1]);
        Ok(match p {
            Parameterization::Eps => eps,
            Parameterization::X0 => x0,
            Parameterization::V => eps * a.view([-1, 1, 1, 1]) - &x0 * s.view([-1, 1, 1, 1]),
            Parameterization::Flow => eps - x0,
        })
    }
}

fn check(schedule_preset: &str, p: Parameterization, config: SamplerConfig) {
    tch::manual_seed(0);
    let schedule = NoiseSchedule::preset(schedule_preset).unwrap();
    let sampler = Sampler::new(&schedule, p, &config).unwrap();
    let noise = Tensor::randn([20_000, 2, 1, 1], (Kind::Float, Device::Cpu));
    let mut model = exact_model(&schedule, p);
    let x = sampler
        .run(&noise, &mut model, &mut TorchNoise, None)
        .unwrap()
        .to_kind(Kind::Double)
        .view([-1, 2]);
    let mean = Vec::<f64>::try_from(x.mean_dim(0, false, Kind::Double)).unwrap();
    let centered = &x - x.mean_dim(0, true, Kind::Double);
    let cov = centered.transpose(0, 1).matmul(&centered) / (x.size()[0] - 1) as f64;
    let cov = Vec::<f64>::try_from(cov.flatten(0, 1)).unwrap();
    let (m, c) = data_moments();
    let label = format!("{:?} {schedule_preset} {p}", config.sampler);
    for i in 0..2 {
        assert!((mean[i] - m[i]).abs() < 0.06, "{label}: mean {mean:?} vs {m:?}");
        for j in 0..2 {
            assert!((cov[2 * i + j] - c[i][j]).abs() < 0.15, "{label}: cov {cov:?} vs {c:?}");
        }
    }
}

#[test]
fn ddim_50_steps() {
    let _rng = GlobalRng::lock();
    check("dit", Parameterization::Eps, SamplerConfig::new(SamplerKind::Ddim, 50));
}

#[test]
fn dpm_solver_pp_2m_20_steps() {
    let _rng = GlobalRng::lock();
    check("dit", Parameterization::V, SamplerConfig::new(SamplerKind::DpmSolverPp2m, 20));
}

#[test]
fn flow_euler_50_steps() {
    let _rng = GlobalRng::lock();
    check("flow", Parameterization::Flow, SamplerConfig::new(SamplerKind::FlowEuler, 50));
}

#[test]
fn other_samplers() {
    let _rng = GlobalRng::lock();
    check("dit", Parameterization::Eps, SamplerConfig::new(SamplerKind::Ddpm, 100));
    check("dit", Parameterization::X0, SamplerConfig::new(SamplerKind::Euler, 50));
    check("dit", Parameterization::Eps, SamplerConfig::new(SamplerKind::Heun, 25));
    check("sd3", Parameterization::X0, SamplerConfig::new(SamplerKind::FlowHeun, 25));
}
