//! One interface over the feature networks of Frechet distances, each with its own
//! preprocessing, and batched extraction.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Tensor, nn};

use crate::frechet::StatsError;

/// A network mapping images to feature vectors.
pub trait FeatureExtractor {
    /// The name of the Frechet distance in these features ("FD-EffNet", "FID", ...).
    fn metric_name(&self) -> &'static str;

    /// Feature width `D`.
    fn dim(&self) -> i64;

    /// Features `(B, D)` f32 of pixel images `(B, 1 or 3, H, W)` in `[0, 1]` (any size: the
    /// network's own preprocessing resizes them), on the network's device.
    fn features(&self, images: &Tensor) -> Tensor;

    /// The device the network runs on.
    fn device(&self) -> Device;
}

/// Features `(N, D)` on the CPU of `(N, C, H, W)` images in `[0, 1]`, `batch` at a time,
/// without autograd.
pub fn extract_features(net: &dyn FeatureExtractor, images: &Tensor, batch: i64) -> Tensor {
    tch::no_grad(|| {
        let parts: Vec<Tensor> = images
            .split(batch.max(1), 0)
            .iter()
            .map(|chunk| net.features(&chunk.to_device(net.device())).to_device(Device::Cpu))
            .collect();
        Tensor::cat(&parts, 0)
    })
}

/// Loads weights into a frozen `vs`, checking every name and shape, after dropping the
/// entries of the file that `ignore` names (classifier heads, batch-norm step counters).
pub(crate) fn load_frozen(
    vs: &mut nn::VarStore,
    path: &Path,
    ignore: impl Fn(&str) -> bool,
) -> Result<(), StatsError> {
    let tensors: BTreeMap<String, Tensor> = lpl_tensor_io::read_tensors(path)?
        .into_iter()
        .filter(|(k, _)| !(k.ends_with("num_batches_tracked") || ignore(k)))
        .collect();
    lpl_tensor_io::load_into(vs, &tensors, path)?;
    vs.freeze();
    Ok(())
}
