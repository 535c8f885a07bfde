//! The training loss of a KL autoencoder (Rombach et al. 2022, without the adversarial
//! term): per-image reconstruction error summed over pixels plus `kl_weight` times the
//! per-image KL divergence summed over latent elements, both averaged over the batch.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::autoencoder::LatentDistribution;

/// The per-pixel reconstruction error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// Absolute error (LDM's choice; sharper).
    #[default]
    L1,
    /// Squared error.
    L2,
}

/// The three terms of one batch, scalars (0-d f32 tensors, no host synchronisation).
#[derive(Debug)]
pub struct AeLoss {
    /// `reconstruction + kl_weight * kl`, to backpropagate.
    pub total: Tensor,
    /// Mean over the batch of the per-image summed reconstruction error.
    pub reconstruction: Tensor,
    /// Mean over the batch of the per-image KL divergence.
    pub kl: Tensor,
}

/// The loss of reconstructions `recon` of `images` (both `(B, C, H, W)`, same range) from
/// the latent distribution `dist`.
pub fn ae_loss(
    images: &Tensor,
    recon: &Tensor,
    dist: &LatentDistribution,
    reconstruction: Reconstruction,
    kl_weight: f64,
) -> AeLoss {
    let diff = recon.to_kind(Kind::Float) - images.to_kind(Kind::Float);
    let per_pixel = match reconstruction {
        Reconstruction::L1 => diff.abs(),
        Reconstruction::L2 => diff.square(),
    };
    let rec = per_pixel.sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float).mean(Kind::Float);
    let kl = dist.kl().mean(Kind::Float);
    AeLoss { total: &rec + &kl * kl_weight, reconstruction: rec, kl }
}
