//! Feature normalisations of shared/LPL.md step 7. Inputs `(B, C, H, W)` f32.

use tch::{Kind, Tensor};

use crate::config::Normalization;

const STATS_EPS: f64 = 1e-6;
const SHARED_EPS: f64 = 1e-6;
const OWN_EPS: f64 = 1e-10;

/// Per-sample, per-channel mean and population std over H*W, each `(B, C, 1, 1)`.
pub fn spatial_stats(f: &Tensor) -> (Tensor, Tensor) {
    let dims = [2i64, 3];
    let mean = f.mean_dim(&dims[..], true, Kind::Float);
    let std = f.std_dim(&dims[..], false, true);
    (mean, std)
}

/// L2 norm across channels at each pixel, `(B, 1, H, W)`.
pub fn channel_norm(f: &Tensor) -> Tensor {
    f.square().sum_dim_intlist(1, true, Kind::Float).sqrt()
}

/// Normalises the prediction features `pred` and (already masked) target features
/// `target`; gradients flow through everything computed from `pred`.
pub fn normalize(norm: Normalization, pred: &Tensor, target: &Tensor) -> (Tensor, Tensor) {
    match norm {
        Normalization::PredStats => {
            let (mu, s) = spatial_stats(pred);
            let denom = s + STATS_EPS;
            ((pred - &mu) / &denom, (target - &mu) / &denom)
        }
        Normalization::SeparateStats => {
            let (mu_p, s_p) = spatial_stats(pred);
            let (mu_t, s_t) = spatial_stats(target);
            ((pred - mu_p) / (s_p + STATS_EPS), (target - mu_t) / (s_t + STATS_EPS))
        }
        Normalization::TargetChannelL2 => {
            let denom = channel_norm(target) + SHARED_EPS;
            (pred / &denom, target / &denom)
        }
        Normalization::ChannelL2 => {
            (pred / (channel_norm(pred) + OWN_EPS), target / (channel_norm(target) + OWN_EPS))
        }
        Normalization::None => (pred.shallow_clone(), target.shallow_clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn pred_stats_uses_prediction_statistics_for_both_branches() {
        // one sample, one channel, 2x2: pred = [1, 2, 3, 4] (mean 2.5, population std
        // sqrt(1.25)), target = [0, 0, 0, 0]
        let pred =
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 1, 2, 2]).set_requires_grad(true);
        let target = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
        let (p, t) = normalize(Normalization::PredStats, &pred, &target);
        let s = 1.25f64.sqrt() + 1e-6;
        let p_expected: Vec<f64> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| (v - 2.5) / s).collect();
        let p_got = Vec::<f64>::try_from(p.flatten(0, -1).to_kind(Kind::Double)).unwrap();
        for (a, b) in p_got.iter().zip(&p_expected) {
            // 1e-5: |p| < 1.4 from a few f32 ops and a 1-ulp (MKL) sqrt(1.25): < 5e-7
            assert!((a - b).abs() < 1e-5, "{p_got:?}");
        }
        let t_got = Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap();
        assert!(t_got.iter().all(|v| (v + 2.5 / s).abs() < 1e-5), "{t_got:?}"); // as above
        // gradient of sum((p - t)^2) w.r.t. pred: p - t = pred / s exactly (mu cancels), so
        // d/dpred sum((pred / s)^2) with s depending on pred:
        // = 2 pred / s^2 - (sum pred^2 / s^3) * ds/dpred, ds/dpred_i = (pred_i - mu) / (n s)
        let loss = (&p - &t).square().sum(Kind::Float);
        loss.backward();
        let g = Vec::<f64>::try_from(pred.grad().flatten(0, -1).to_kind(Kind::Double)).unwrap();
        let x = [1.0f64, 2.0, 3.0, 4.0];
        let sum_sq: f64 = x.iter().map(|v| v * v).sum();
        let sd = 1.25f64.sqrt();
        for i in 0..4 {
            let ds = (x[i] - 2.5) / (4.0 * sd);
            let expected = 2.0 * x[i] / (s * s) - 2.0 * sum_sq / (s * s * s) * ds;
            // 1e-4: |g| <= 16 (sums like 1.6 + 14.4), a few ulps of 16 + a 1-ulp sqrt: < 2e-5
            assert!((g[i] - expected).abs() < 1e-4, "grad {g:?}, expected[{i}] = {expected}");
        }
    }

    #[test]
    fn target_channel_l2_divides_both_by_the_target_norm() {
        // 2 channels at 1 pixel: target (3, 4) has norm 5
        let pred = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2, 1, 1]);
        let target = Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2, 1, 1]);
        let (p, t) = normalize(Normalization::TargetChannelL2, &pred, &target);
        let d = 5.0 + 1e-6;
        // 1e-7: 1/d ~ 0.2 (ulp 1.5e-8), even with a 1-ulp sqrt(25) (MKL VML): < 3e-8
        assert!((f64::try_from(p.get(0).get(0)).unwrap() - 1.0 / d).abs() < 1e-7);
        // 2e-7 (was 1e-7): 4/d ~ 0.8; a 1-ulp-low MKL sqrt(25) puts t 1.12e-7 off (7e-9 if exact)
        assert!((f64::try_from(t.get(0).get(1)).unwrap() - 4.0 / d).abs() < 2e-7);
    }
}
