//! Peak signal-to-noise ratio.

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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn known_values() {
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
        assert!((p[0] - 20.0).abs() < 1e-4 && (p[1] - 40.0).abs() < 1e-3, "{p:?}");
    }
}
