//! Euler and Heun on the rectified-flow ODE `dz/dt = eps - z_0`, over diffusers' shifted
//! sigma grid.

use tch::Tensor;

use super::{Model, SamplerConfig, SamplerKind, call, grid, level};
use crate::error::Result;
use crate::parameterization::Parameterization;
use crate::schedule::FlowSchedule;

/// The velocity implied by the model's prediction at time `s`.
fn velocity(
    model: &mut Model<'_>,
    p: Parameterization,
    x: &Tensor,
    s: f32,
    n: f32,
) -> Result<Tensor> {
    let out = call(model, x, s * n)?;
    if p == Parameterization::Flow {
        return Ok(out);
    }
    let lvl = level(1.0 - s as f64, s as f64, x, false)?;
    Ok(p.to_eps_at(&lvl, &out, x)? - p.to_x0_at(&lvl, &out, x)?)
}

pub(super) fn run(
    f: &FlowSchedule,
    c: &SamplerConfig,
    p: Parameterization,
    noise: &Tensor,
    model: &mut Model<'_>,
    report: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let n = f.config().num_train_timesteps;
    let sigmas = grid::flow_sigmas(n, c.steps, f.config().shift);
    let n = n as f32;
    let mut x = noise.shallow_clone();
    for i in 0..c.steps {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let dt = (s_next - s) as f64;
        let u = velocity(model, p, &x, s, n)?;
        x = if c.sampler == SamplerKind::FlowHeun && s_next > 0.0 {
            let predicted = &x + &u * dt;
            let u_next = velocity(model, p, &predicted, s_next, n)?;
            &x + (u + u_next) * (dt / 2.0)
        } else {
            &x + u * dt
        };
        report(i, &x);
    }
    Ok(x)
}
