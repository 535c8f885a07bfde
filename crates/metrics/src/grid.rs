//! Image grids.

use tch::{Kind, Tensor};

/// Tiles `(N, C, H, W)` images into one `(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)`
/// image, `nrow` per row, separated by `pad` pixels of white (1.0), row-major.
pub fn make_grid(images: &Tensor, nrow: i64, pad: i64) -> Tensor {
    let (n, c, h, w) = images.size4().unwrap_or((0, 1, 1, 1));
    let nrow = nrow.clamp(1, n.max(1));
    let rows = (n + nrow - 1) / nrow;
    let out = Tensor::ones(
        [c, rows * (h + pad) + pad, nrow * (w + pad) + pad],
        (Kind::Float, images.device()),
    );
    for i in 0..n {
        let (r, col) = (i / nrow, i % nrow);
        out.narrow(1, pad + r * (h + pad), h)
            .narrow(2, pad + col * (w + pad), w)
            .copy_(&images.get(i).to_kind(Kind::Float));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn layout() {
        let images = Tensor::zeros([5, 1, 2, 3], (Kind::Float, Device::Cpu));
        let g = make_grid(&images, 2, 1);
        assert_eq!(g.size(), vec![1, 3 * 3 + 1, 2 * 4 + 1]);
        // image 4 (row 2, col 0) is black at its place, padding white
        assert_eq!(f64::try_from(g.get(0).get(7).get(1)).unwrap(), 0.0);
        assert_eq!(f64::try_from(g.get(0).get(0).get(0)).unwrap(), 1.0);
        // the empty last cell stays white
        assert_eq!(f64::try_from(g.get(0).get(7).get(5)).unwrap(), 1.0);
    }
}
