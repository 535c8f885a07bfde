//! The `pixel` baseline for ablations: MSE between the full decodes of x0_hat and z0.

use lpl_autoencoder::{Autoencoder, LatentCodec};
use tch::{Kind, Tensor};

use crate::error::Result;

/// Mean squared error between `decode(x0_hat)` and `decode(z0)` (model-space latents
/// `(B, C, h, w)`, decoded through the codec; the target branch without gradient), 0-d f32.
pub fn pixel_loss(
    ae: &dyn Autoencoder,
    codec: &LatentCodec,
    x0_hat: &Tensor,
    z0: &Tensor,
) -> Result<Tensor> {
    let pred = ae.decode(&codec.to_decoder(&x0_hat.to_kind(Kind::Float))?)?;
    let target = tch::no_grad(|| -> Result<Tensor> {
        Ok(ae.decode(&codec.to_decoder(&z0.to_kind(Kind::Float))?)?)
    })?;
    Ok((pred.to_kind(Kind::Float) - target.to_kind(Kind::Float)).square().mean(Kind::Float))
}
