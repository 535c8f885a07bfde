//! Reconstruction quality: peak signal-to-noise ratio and structural similarity (SSIM).

use tch::{Kind, Tensor};

/// PSNR per image in dB, `(B,)` f64: `10 log10(max^2 / mse)` with the MSE over C, H, W of
/// `(B, C, H, W)` images `a` and `b` whose values span `[0, max]`. Identical images give
/// infinity.
pub fn psnr(a: &Tensor, b: &Tensor, max: f64) -> Tensor {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).square().flatten(1, -1).mean_dim(
        1,
        false,
        Kind::Double,
    );
    (mse.reciprocal() * (max * max)).log10() * 10.0
}

/// SSIM per image, `(B,)` f64 (Wang et al. 2004, the common settings of skimage with
/// `gaussian_weights=True` and pytorch-msssim): 11x11 Gaussian window, sigma 1.5 (the window
/// shrinks to the largest odd size that fits smaller images), "valid" filtering, population
/// statistics, `C1 = (0.01 max)^2`, `C2 = (0.03 max)^2`, each channel separately, then the
/// mean over the map and the channels. `a`, `b`: `(B, C, H, W)` with values in `[0, max]`.
pub fn ssim(a: &Tensor, b: &Tensor, max: f64) -> Tensor {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let (_, c, h, w) = a.size4().unwrap_or((0, 1, 11, 11));
    let size = 11.min(h).min(w);
    let size = if size % 2 == 0 { size - 1 } else { size }.max(1);
    let x = Tensor::arange(size, (Kind::Double, a.device())) - (size / 2) as f64;
    let g = (x.square() / (-2.0 * 1.5 * 1.5)).exp();
    let g = &g / g.sum(Kind::Double);
    let (gh, gv) = (
        g.view([1, 1, 1, size]).repeat([c, 1, 1, 1]),
        g.view([1, 1, size, 1]).repeat([c, 1, 1, 1]),
    );
    let filter = |t: &Tensor| {
        t.conv2d(&gh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c).conv2d(
            &gv,
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            c,
        )
    };
    let (mu_a, mu_b) = (filter(&a), filter(&b));
    let var_a = filter(&a.square()) - mu_a.square();
    let var_b = filter(&b.square()) - mu_b.square();
    let cov = filter(&(&a * &b)) - &mu_a * &mu_b;
    let (c1, c2) = ((0.01 * max).powi(2), (0.03 * max).powi(2));
    let map = ((&mu_a * &mu_b * 2.0 + c1) * (cov * 2.0 + c2))
        / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2));
    map.flatten(1, -1).mean_dim(1, false, Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpl_torch_ext::GlobalRng;
    use tch::Device;

    #[test]
    fn ssim_reference_values() {
        let _rng = GlobalRng::lock();
        let opts = (Kind::Float, Device::Cpu);
        // constant images p and q: variances and covariance vanish, SSIM is the luminance term
        let (p, q) = (0.3, 0.7);
        let s = f64::try_from(
            ssim(
                &Tensor::full([1, 3, 16, 16], p, opts),
                &Tensor::full([1, 3, 16, 16], q, opts),
                1.0,
            )
            .get(0),
        )
        .unwrap();
        let c1 = 0.0001;
        let expected = (2.0 * p * q + c1) / (p * p + q * q + c1);
        // 1e-6: f64 maths; 0.3 and 0.7 enter as f32 (off by 1.2e-8), moving SSIM by < 5e-8
        assert!((s - expected).abs() < 1e-6, "{s} vs {expected}");
        // identical textured images: 1; more noise, lower SSIM
        tch::manual_seed(0);
        let x = Tensor::rand([2, 1, 32, 32], opts);
        let same = Vec::<f64>::try_from(ssim(&x, &x, 1.0)).unwrap();
        // 1e-9: numerator and denominator are the same f64 expressions for a = b: 1 to ~1e-16
        assert!(same.iter().all(|v| (v - 1.0).abs() < 1e-9), "{same:?}");
        let noise = x.randn_like();
        let s1 = f64::try_from(ssim(&x, &(&x + &noise * 0.05), 1.0).mean(Kind::Double)).unwrap();
        let s2 = f64::try_from(ssim(&x, &(&x + &noise * 0.2), 1.0).mean(Kind::Double)).unwrap();
        assert!(1.0 > s1 && s1 > s2 && s2 > 0.0, "{s1} {s2}");
    }

    #[test]
    fn known_values() {
        let _rng = GlobalRng::lock();
        let a = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        // image 0 off by 0.1 everywhere: mse 0.01 -> 20 dB; image 1 off by 0.01: 40 dB
        let b = Tensor::cat(
            &[
                Tensor::full([1, 1, 4, 4], 0.1, (Kind::Float, Device::Cpu)),
                Tensor::full([1, 1, 4, 4], 0.01, (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let p = Vec::<f64>::try_from(psnr(&a, &b, 1.0)).unwrap();
        // 1e-4 / 1e-3 (loose): f32 0.1 and 0.01 shift the f64 PSNR by 1.3e-7 / 1.9e-7 dB
        assert!((p[0] - 20.0).abs() < 1e-4 && (p[1] - 40.0).abs() < 1e-3, "{p:?}");
    }
}
