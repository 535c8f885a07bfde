//! AdamW (fused kernel) with gradient clipping against torch.optim.AdamW + clip_grad_norm_
//! (`tests/fixtures/make_fixtures.py`), and the EMA update against its formula.
//!
//! Tolerance: torch writes the fixture with its for-each AdamW; ours is libtorch's fused
//! kernel, which orders the same f32 arithmetic differently (sqrt(v) / sqrt(bc2) against
//! sqrt(v / bc2)): a few ulps per step, so 1e-6 absolute + 1e-5 relative after six steps.
//! Any CPU: |p| <= 2.2 (tol 2.3e-5) gets ~2 ulps = 5e-7 a step from reordering, 1-ulp sqrt or
//! FMA lerp: <= 3e-6; m, v, the clip norm (<= 18) and the EMA lerp err a few ulps (~1e-7 rel).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use lpl_torch_ext::GlobalRng;
use lpl_trainer::adamw::{AdamW, AdamWConfig};
use lpl_trainer::ema::{Ema, EmaConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const NAMES: [&str; 3] = ["a.bias", "a.weight", "b.weight"];

fn fixture() -> BTreeMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_optim.safetensors");
    lpl_tensor_io::read_tensors(&path).unwrap()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    let err = (a - b).abs().max().double_value(&[]);
    let tol = 1e-6 + 1e-5 * b.abs().max().double_value(&[]);
    assert!(err <= tol, "{what}: max |diff| {err} > {tol}");
}

#[test]
fn fused_adamw_with_clipping_matches_torch_optim() {
    let _rng = GlobalRng::lock();
    let f = fixture();
    let vs = VarStore::new(Device::Cpu);
    let vars: Vec<Tensor> = NAMES
        .iter()
        .map(|name| {
            let (module, leaf) = name.split_once('.').unwrap();
            vs.root().sub(module).var_copy(leaf, &f[&format!("init/{name}")])
        })
        .collect();
    let config = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(&vs, config).unwrap();
    for step in 0..6 {
        opt.zero_grad();
        // a loss whose gradient is the fixture's: sum(p * g)
        let loss = NAMES
            .iter()
            .zip(&vars)
            .map(|(name, p)| (p * &f[&format!("grad/{step}/{name}")]).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        let norm = opt.clip_grad_norm(1.0).unwrap();
        close(&norm.reshape([1]), &f[&format!("grad_norm/{step}")], "grad norm");
        opt.step(1e-2).unwrap();
        for (name, p) in NAMES.iter().zip(&vars) {
            close(p, &f[&format!("adamw/{step}/{name}")], &format!("{name} after step {step}"));
        }
    }
    let state: BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    for name in NAMES {
        close(&state[&format!("adamw.m.{name}")], &f[&format!("adamw_m/{name}")], "exp_avg");
        close(&state[&format!("adamw.v.{name}")], &f[&format!("adamw_v/{name}")], "exp_avg_sq");
    }
    assert_eq!(opt.step_count(), 6);
}

#[test]
fn ema_update_is_the_lerp_towards_the_weights() {
    let _rng = GlobalRng::seeded(3);
    let vs = VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[3, 2], tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 });
    let b = vs.root().var("b", &[2], tch::nn::Init::Const(0.5));
    let mut ema = Ema::new(&vs, EmaConfig { decay: 0.9, warmup: false }).unwrap();
    let (w0, b0) = (w.detach().copy(), b.detach().copy());
    tch::no_grad(|| {
        let mut w = w.shallow_clone();
        w += 1.0;
        let mut b = b.shallow_clone();
        b *= 3.0;
    });
    ema.update(&vs, 0).unwrap();
    let shadow: BTreeMap<&str, &Tensor> =
        ema.tensors().iter().map(|(k, t)| (k.as_str(), t)).collect();
    close(shadow["w"], &(&w0 * 0.9 + (&w0 + 1.0) * 0.1), "ema w");
    close(shadow["b"], &(&b0 * 0.9 + (&b0 * 3.0) * 0.1), "ema b");
    // a skipped step (found_inf = 1) leaves the shadow exactly as it was
    let before: Vec<Tensor> = ema.tensors().iter().map(|(_, t)| t.copy()).collect();
    let skip = Tensor::ones([], (Kind::Float, Device::Cpu));
    ema.update_unless(&vs, 1, &skip).unwrap();
    for ((name, t), b) in ema.tensors().iter().zip(&before) {
        assert!(t.equal(b), "{name} moved on a skipped step");
    }
}
