//! Preprocessing of in-memory image tensors.

use tch::{Kind, Tensor};

use crate::error::{DataError, Result};

/// Zero-pads `(N, C, H, W)` images symmetrically to `size x size` (Fashion-MNIST 28 -> 32;
/// its background is 0).
pub fn pad_to(images: &Tensor, size: i64) -> Result<Tensor> {
    let (_, _, h, w) = images.size4()?;
    if h > size || w > size {
        return Err(DataError::Invalid(format!("cannot pad {h}x{w} images to {size}x{size}")));
    }
    let (top, left) = ((size - h) / 2, (size - w) / 2);
    Ok(images.f_constant_pad_nd([left, size - w - left, top, size - h - top])?)
}

/// u8 images to f32 in `[0, 1]`.
pub fn to_unit_range(images: &Tensor) -> Result<Tensor> {
    Ok(images.f_to_kind(Kind::Float)? / 255.0)
}
