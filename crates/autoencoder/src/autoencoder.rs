//! The [`Autoencoder`] trait every autoencoder implements (ours, TAESD, a user's own), and the
//! latent distribution encoders return.

use tch::{Kind, Tensor};

use crate::codec::LatentCodec;
use crate::error::{AutoencoderError, Result};

/// A diagonal Gaussian over decoder latents (deterministic when `logvar` is `None`).
#[derive(Debug)]
pub struct LatentDistribution {
    /// `(B, C, h, w)`.
    pub mean: Tensor,
    /// `(B, C, h, w)`, clamped to `[-30, 20]` as diffusers does; `None` for deterministic
    /// encoders.
    pub logvar: Option<Tensor>,
}

impl LatentDistribution {
    /// The mean (what `lpl ae encode` writes unless `--sample`).
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// `mean + exp(logvar / 2) * n`, n standard normal (libtorch's generator).
    pub fn sample(&self) -> Tensor {
        match &self.logvar {
            Some(logvar) => &self.mean + (logvar * 0.5).exp() * self.mean.randn_like(),
            None => self.mean.shallow_clone(),
        }
    }

    /// `KL(q || N(0, I))` per sample, `(B,)` f32: `0.5 * sum(mean^2 + var - 1 - logvar)`
    /// over C, h, w (diffusers' `DiagonalGaussianDistribution.kl`). Zero when deterministic.
    pub fn kl(&self) -> Tensor {
        let dims = [1i64, 2, 3];
        match &self.logvar {
            Some(logvar) => {
                (self.mean.square() + logvar.exp() - 1.0 - logvar).sum_dim_intlist(
                    &dims[..],
                    false,
                    Kind::Float,
                ) * 0.5
            }
            None => Tensor::zeros([self.mean.size()[0]], (Kind::Float, self.mean.device())),
        }
    }
}

/// One decoder layer that [`Autoencoder::decode_features`] can tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayer {
    /// The module name (`mid_block`, `up_blocks.0`, ... or TAESD's stage index).
    pub name: String,
    /// Channels of the feature map.
    pub channels: i64,
    /// Its spatial size relative to the latent grid (1 for the mid block, then 2, 4, ...).
    pub upscale: i64,
}

/// What the trainer, the latent cache and the latent perceptual loss need of an autoencoder.
///
/// Images are `(B, image_channels, H, W)` in the codec's input range with H and W multiples
/// of `downsample_factor`; decoder latents are `(B, latent_channels, H / f, W / f)`.
pub trait Autoencoder {
    /// Channels of the images it encodes and decodes.
    fn image_channels(&self) -> i64;
    /// Channels of its latents.
    fn latent_channels(&self) -> i64;
    /// Spatial downsampling factor f between images and latents.
    fn downsample_factor(&self) -> i64;
    /// Its latent constants.
    fn codec(&self) -> &LatentCodec;
    /// Images to the latent distribution (decoder space).
    fn encode(&self, images: &Tensor) -> Result<LatentDistribution>;
    /// Decoder latents to images (including `post_quant_conv` where there is one).
    fn decode(&self, z: &Tensor) -> Result<Tensor>;
    /// The tappable decoder layers in order: the mid block, then each up block / stage.
    fn feature_layers(&self) -> Vec<FeatureLayer>;
    /// The decoder's feature maps of decoder latents `z`: the mid-block output followed by
    /// the outputs of the first `depth` up blocks (`depth + 1` maps), each equal to the
    /// corresponding intermediate of [`Self::decode`]. Layers past the deepest requested one
    /// are not run. `post_quant_conv = false` skips that convolution (the diffusers LPL
    /// port's behaviour); autoencoders without one ignore the flag.
    fn decode_features(
        &self,
        z: &Tensor,
        depth: usize,
        post_quant_conv: bool,
    ) -> Result<Vec<Tensor>>;
    /// One stage of [`Self::decode_features`], for recomputation (activation checkpointing):
    /// stage 0 maps decoder latents to the first feature map (`post_quant_conv` when asked,
    /// the input convolution, the mid block), stage `s >= 1` maps feature map `s - 1` to
    /// feature map `s`. Chaining stages `0..=depth` gives `decode_features(z, depth, _)`.
    /// `Ok(None)` (the default): the autoencoder does not expose its stages, and callers
    /// keep the whole graph.
    fn decode_stage(
        &self,
        h: &Tensor,
        stage: usize,
        post_quant_conv: bool,
    ) -> Result<Option<Tensor>> {
        let _ = (h, stage, post_quant_conv);
        Ok(None)
    }
    /// How many pieces [`Self::decode_stage_part`] splits stage `stage` into (finer
    /// activation checkpointing: a resnet at a time); 1, the default, is the whole stage.
    fn decode_stage_parts(&self, stage: usize) -> usize {
        let _ = stage;
        1
    }
    /// Piece `part` of decoder stage `stage`: chaining parts `0..decode_stage_parts(stage)`
    /// from the stage's input gives [`Self::decode_stage`]. The default has one piece, the
    /// stage itself.
    fn decode_stage_part(
        &self,
        h: &Tensor,
        stage: usize,
        part: usize,
        post_quant_conv: bool,
    ) -> Result<Option<Tensor>> {
        if part == 0 { self.decode_stage(h, stage, post_quant_conv) } else { Ok(None) }
    }
    /// Whether the decoder starts with a `post_quant_conv`.
    fn has_post_quant_conv(&self) -> bool {
        false
    }
    /// Its trainable tensors (empty for a model that keeps them elsewhere); losses use it to
    /// check that a frozen autoencoder really is frozen.
    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }
    /// Freezes (`false`) or unfreezes its parameters.
    fn set_requires_grad(&mut self, _requires_grad: bool) {}
    /// Its weights by name (for the fingerprint and for saving). Required: two autoencoders
    /// with the same (empty) list would share a fingerprint, and a latent cache could then
    /// be decoded by the wrong one.
    fn named_weights(&self) -> Vec<(String, Tensor)>;

    /// A digest of its weights (names, dtypes, shapes, bytes): what a latent cache records
    /// to check that it is decoded by the autoencoder that encoded it. An error for an
    /// autoencoder that exposes no weights.
    fn fingerprint(&self) -> Result<String> {
        let weights = self.named_weights();
        if weights.is_empty() {
            return Err(AutoencoderError::Input(
                "the autoencoder exposes no weights (named_weights is empty), so it has no fingerprint"
                    .to_string(),
            ));
        }
        Ok(lpl_tensor_io::fingerprint(&weights)?)
    }
}

/// Checks `images` `(B, C, H, W)` against an autoencoder's channel count and factor.
pub fn check_images(images: &Tensor, channels: i64, factor: i64) -> Result<()> {
    let size = images.size();
    if size.len() != 4 || size[1] != channels || size[2] % factor != 0 || size[3] % factor != 0 {
        return Err(AutoencoderError::Input(format!(
            "images must be (B, {channels}, H, W) with H and W multiples of {factor}, got {size:?}"
        )));
    }
    Ok(())
}

/// Checks latents `(B, C, h, w)` against an autoencoder's latent channels.
pub fn check_latents(z: &Tensor, channels: i64) -> Result<()> {
    let size = z.size();
    if size.len() != 4 || size[1] != channels {
        return Err(AutoencoderError::Input(format!(
            "latents must be (B, {channels}, h, w), got {size:?}"
        )));
    }
    Ok(())
}

/// Checks a requested feature depth against the number of up stages.
pub fn check_depth(depth: usize, up_stages: usize) -> Result<()> {
    if depth > up_stages {
        return Err(AutoencoderError::Input(format!(
            "feature depth {depth} exceeds the decoder's {up_stages} up blocks"
        )));
    }
    Ok(())
}
