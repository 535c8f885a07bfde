//! The outlier mask of shared/LPL.md step 6: per sample and channel, keep the values inside
//! `(q_lo - 2 std, q_hi + 2 std)`, then dilate and erode the kept set.

use tch::{Kind, Tensor};

/// Dilation and erosion kernels at a layer `down` times below full decoder resolution:
/// `ceil(dilate / down)` and `ceil(erode / down)`, where a dilation kernel of 2 becomes 1
/// and an erosion kernel of 2 becomes 3 (the reference's rules); any other even kernel
/// becomes the next odd one so that stride-1 pooling keeps the size.
pub fn kernels(dilate: i64, erode: i64, down: i64) -> (i64, i64) {
    let ceil_div = |a: i64| (a + down - 1) / down;
    let mut kd = ceil_div(dilate);
    let mut ke = ceil_div(erode);
    if kd == 2 {
        kd = 1;
    }
    if ke == 2 {
        ke = 3;
    }
    (kd | 1, ke | 1)
}

/// 1-based ranks of the lower and upper order statistics among `n` values:
/// `floor(n q)` and `floor(n (1 - q))`, clamped to `[1, n]`.
pub fn quantile_ranks(n: i64, q: f64) -> (i64, i64) {
    let clamp = |k: f64| (k.floor() as i64).clamp(1, n);
    (clamp(n as f64 * q), clamp(n as f64 * (1.0 - q)))
}

/// The keep mask of features `f` `(B, C, H, W)` (any float dtype; computed without grad),
/// bool `(B, C, H, W)`: `q_lo - m < f < q_hi + m` with `m = 2 std` (unbiased, over H*W),
/// then stride-1 max-pool dilation and erosion with [`kernels`] for `down`.
pub fn outlier_mask(f: &Tensor, quantile: f64, dilate: i64, erode: i64, down: i64) -> Tensor {
    tch::no_grad(|| {
        let f = f.detach().to_kind(Kind::Float);
        let flat = f.flatten(2, -1);
        let n = flat.size()[2];
        let (k_lo, k_hi) = quantile_ranks(n, quantile);
        let q_lo = flat.kthvalue(k_lo, -1, true).0.unsqueeze(-1);
        let q_hi = flat.kthvalue(k_hi, -1, true).0.unsqueeze(-1);
        let m = flat.std_dim(-1, true, true).unsqueeze(-1) * 2.0;
        let keep = f.gt_tensor(&(q_lo - &m)).logical_and(&f.lt_tensor(&(q_hi + &m)));
        let (kd, ke) = kernels(dilate, erode, down);
        let pool = |x: &Tensor, k: i64| {
            x.max_pool2d([k, k], [1, 1], [(k - 1) / 2, (k - 1) / 2], [1, 1], false)
        };
        let dilated = pool(&keep.to_kind(Kind::Float), kd);
        let eroded = -pool(&-dilated, ke);
        eroded.gt(0.5)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_rules() {
        assert_eq!(kernels(3, 5, 1), (3, 5));
        // d = 2: ceil(1.5) = 2 -> 1 for the dilation, ceil(2.5) = 3 for the erosion
        assert_eq!(kernels(3, 5, 2), (1, 3));
        // d = 4: ceil(0.75) = 1, ceil(1.25) = 2 -> 3
        assert_eq!(kernels(3, 5, 4), (1, 3));
    }

    #[test]
    fn ranks() {
        assert_eq!(quantile_ranks(256, 0.02), (5, 250)); // 5.12 -> 5, 250.88 -> 250
        assert_eq!(quantile_ranks(16, 0.02), (1, 15)); // 0.32 -> clamped to 1
    }

    #[test]
    fn isolated_outlier_is_removed_and_its_neighbourhood_eroded() {
        // 8x8 ramp in [0, 1) with one spike of 1000 at (3, 4). Ranks 1 and 62 of 64; the
        // spike makes std ~ 125, so the band is about (-250, 251): only the spike is out.
        let mut v: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        v[3 * 8 + 4] = 1000.0;
        let f = Tensor::from_slice(&v).view([1, 1, 8, 8]);
        let mask_d2 = outlier_mask(&f, 0.02, 3, 5, 2);
        let m = Vec::<bool>::try_from(mask_d2.flatten(0, -1)).unwrap();
        // d = 2: no dilation (kernel 1), 3x3 erosion: the spike and its 8 neighbours go
        for r in 0..8 {
            for c in 0..8 {
                let near = (r as i64 - 3).abs() <= 1 && (c as i64 - 4).abs() <= 1;
                assert_eq!(m[r * 8 + c], !near, "({r}, {c})");
            }
        }
        // d = 1: the 3x3 dilation refills the single-pixel hole, so nothing is removed
        let mask_d1 = outlier_mask(&f, 0.02, 3, 5, 1);
        assert!(bool::try_from(mask_d1.all()).unwrap());
    }
}
