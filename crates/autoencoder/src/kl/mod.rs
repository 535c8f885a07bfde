//! diffusers' `AutoencoderKL` (SD 1.x/2.x, SDXL, SD3, FLUX.1 VAEs), with module names that
//! mirror its state dict so a Hugging Face `vae/` folder loads without renaming.

mod blocks;
mod config;

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::autoencoder::{
    Autoencoder, FeatureLayer, LatentDistribution, check_depth, check_images, check_latents,
};
use crate::codec::LatentCodec;
use crate::error::Result;
use blocks::{DownEncoderBlock2D, MidBlock, UpDecoderBlock2D, conv, group_norm};
pub use config::{AutoencoderKlConfig, KL_PRESETS};

/// `conv_in -> down_blocks -> mid_block -> conv_norm_out -> silu -> conv_out`:
/// `(B, in, H, W) -> (B, 2 * latent, H / f, W / f)` (mean and log-variance).
#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(p: nn::Path, c: &AutoencoderKlConfig) -> Self {
        let boc = &c.block_out_channels;
        let g = c.norm_num_groups;
        let down_blocks = (0..boc.len())
            .map(|i| {
                let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
                let last = i + 1 == boc.len();
                DownEncoderBlock2D::new(
                    &p / "down_blocks" / i,
                    c_in,
                    boc[i],
                    c.layers_per_block,
                    g,
                    !last,
                )
            })
            .collect();
        let top = boc[boc.len() - 1];
        Self {
            conv_in: conv(&p / "conv_in", c.in_channels, boc[0], 3, 1, 1),
            down_blocks,
            mid_block: MidBlock::new(&p / "mid_block", top, g, c.mid_block_add_attention),
            conv_norm_out: group_norm(&p / "conv_norm_out", g, top),
            conv_out: conv(&p / "conv_out", top, 2 * c.latent_channels, 3, 1, 1),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for b in &self.down_blocks {
            h = b.forward(&h);
        }
        let h = self.mid_block.forward(&h);
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// `conv_in -> mid_block -> up_blocks -> conv_norm_out -> silu -> conv_out`:
/// `(B, latent, h, w) -> (B, out, h * f, w * f)`.
#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    /// `(channels, upscale)` of the mid block and of each up block's output.
    layers: Vec<(i64, i64)>,
}

impl Decoder {
    fn new(p: nn::Path, c: &AutoencoderKlConfig) -> Self {
        let reversed: Vec<i64> = c.block_out_channels.iter().rev().copied().collect();
        let g = c.norm_num_groups;
        let mut layers = vec![(reversed[0], 1)];
        let mut upscale = 1;
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let c_in = if i == 0 { reversed[0] } else { reversed[i - 1] };
                let last = i + 1 == reversed.len();
                let block = UpDecoderBlock2D::new(
                    &p / "up_blocks" / i,
                    c_in,
                    reversed[i],
                    c.layers_per_block + 1,
                    g,
                    !last,
                );
                if block.upsamples() {
                    upscale *= 2;
                }
                layers.push((reversed[i], upscale));
                block
            })
            .collect();
        Self {
            conv_in: conv(&p / "conv_in", c.latent_channels, reversed[0], 3, 1, 1),
            mid_block: MidBlock::new(&p / "mid_block", reversed[0], g, c.mid_block_add_attention),
            up_blocks,
            conv_norm_out: group_norm(&p / "conv_norm_out", g, c.block_out_channels[0]),
            conv_out: conv(&p / "conv_out", c.block_out_channels[0], c.out_channels, 3, 1, 1),
            layers,
        }
    }

    /// The mid-block output and the outputs of the first `depth` up blocks.
    fn features(&self, z: &Tensor, depth: usize) -> Vec<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z));
        let mut out = vec![h.shallow_clone()];
        for b in &self.up_blocks[..depth] {
            h = b.forward(&h);
            out.push(h.shallow_clone());
        }
        out
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Tensor {
        let features = self.features(z, self.up_blocks.len());
        let h = features.last().map_or_else(|| z.shallow_clone(), Tensor::shallow_clone);
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// diffusers' `AutoencoderKL`: encoder, optional `quant_conv` / `post_quant_conv`, decoder.
/// Its weights live in its own `VarStore` (names = diffusers state-dict keys).
#[derive(Debug)]
pub struct AutoencoderKl {
    config: AutoencoderKlConfig,
    codec: LatentCodec,
    vs: nn::VarStore,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
}

impl AutoencoderKl {
    /// A randomly initialised model (libtorch's default init) with weights of dtype `kind`.
    pub fn new(config: &AutoencoderKlConfig, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let l = config.latent_channels;
        let encoder = Encoder::new(&root / "encoder", config);
        let decoder = Decoder::new(&root / "decoder", config);
        let quant_conv =
            config.use_quant_conv.then(|| conv(&root / "quant_conv", 2 * l, 2 * l, 1, 1, 0));
        let post_quant_conv =
            config.use_post_quant_conv.then(|| conv(&root / "post_quant_conv", l, l, 1, 1, 0));
        vs.set_kind(kind);
        Ok(Self {
            config: config.clone(),
            codec: config.codec(),
            vs,
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
        })
    }

    /// Loads a diffusers `vae/` folder: `config.json` plus `diffusion_pytorch_model.safetensors`
    /// (or `.bin`), any dtype on disk, converted to `kind`.
    pub fn from_diffusers_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = AutoencoderKlConfig::from_file(&dir.join("config.json"))?;
        let model = Self::new(&config, device, kind)?;
        let file = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join("diffusion_pytorch_model.safetensors"));
        lpl_tensor_io::load_file(&model.vs, &file)?;
        Ok(model)
    }

    /// Its configuration.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Its weights (for training, saving, freezing).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access to its weights (e.g. `set_kind`, `freeze`).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Replaces the codec (e.g. with per-channel statistics of a dataset).
    pub fn set_codec(&mut self, codec: LatentCodec) {
        self.codec = codec;
    }

    /// The dtype of its weights (all share it), read from one tensor rather than by listing
    /// the store on every call.
    fn compute_kind(&self) -> Kind {
        self.decoder.conv_in.ws.kind()
    }
}

impl Autoencoder for AutoencoderKl {
    fn image_channels(&self) -> i64 {
        self.config.in_channels
    }

    fn latent_channels(&self) -> i64 {
        self.config.latent_channels
    }

    fn downsample_factor(&self) -> i64 {
        self.config.downsample_factor()
    }

    fn codec(&self) -> &LatentCodec {
        &self.codec
    }

    /// `(B, in, H, W)` in `[-1, 1]` -> mean and log-variance `(B, latent, H / f, W / f)`.
    fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        check_images(images, self.config.in_channels, self.downsample_factor())?;
        let x = images.f_to_kind(self.compute_kind())?;
        let mut moments = self.encoder.forward(&x);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments);
        }
        let halves = moments.f_chunk(2, 1)?;
        Ok(LatentDistribution {
            mean: halves[0].shallow_clone(),
            logvar: Some(halves[1].f_clamp(-30.0, 20.0)?),
        })
    }

    /// `(B, latent, h, w)` -> `(B, out, h * f, w * f)` in `[-1, 1]` (not clamped).
    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        check_latents(z, self.config.latent_channels)?;
        let mut z = z.f_to_kind(self.compute_kind())?;
        if let Some(p) = &self.post_quant_conv {
            z = p.forward(&z);
        }
        Ok(self.decoder.forward(&z))
    }

    fn feature_layers(&self) -> Vec<FeatureLayer> {
        self.decoder
            .layers
            .iter()
            .enumerate()
            .map(|(i, &(channels, upscale))| FeatureLayer {
                name: if i == 0 { "mid_block".to_string() } else { format!("up_blocks.{}", i - 1) },
                channels,
                upscale,
            })
            .collect()
    }

    fn decode_features(
        &self,
        z: &Tensor,
        depth: usize,
        post_quant_conv: bool,
    ) -> Result<Vec<Tensor>> {
        check_latents(z, self.config.latent_channels)?;
        check_depth(depth, self.decoder.up_blocks.len())?;
        let mut z = z.f_to_kind(self.compute_kind())?;
        if let (true, Some(p)) = (post_quant_conv, &self.post_quant_conv) {
            z = p.forward(&z);
        }
        Ok(self.decoder.features(&z, depth))
    }

    fn decode_stage(
        &self,
        h: &Tensor,
        stage: usize,
        post_quant_conv: bool,
    ) -> Result<Option<Tensor>> {
        let d = &self.decoder;
        if stage == 0 {
            check_latents(h, self.config.latent_channels)?;
            let mut z = h.f_to_kind(self.compute_kind())?;
            if let (true, Some(p)) = (post_quant_conv, &self.post_quant_conv) {
                z = p.forward(&z);
            }
            return Ok(Some(d.mid_block.forward(&d.conv_in.forward(&z))));
        }
        check_depth(stage, d.up_blocks.len())?;
        Ok(Some(d.up_blocks[stage - 1].forward(h)))
    }

    fn decode_stage_parts(&self, stage: usize) -> usize {
        let d = &self.decoder;
        match stage {
            // conv_in (with post_quant_conv), then the mid block's pieces
            0 => 1 + d.mid_block.parts(),
            s => d.up_blocks.get(s - 1).map_or(0, |b| b.parts()),
        }
    }

    fn decode_stage_part(
        &self,
        h: &Tensor,
        stage: usize,
        part: usize,
        post_quant_conv: bool,
    ) -> Result<Option<Tensor>> {
        let d = &self.decoder;
        if stage == 0 {
            if part == 0 {
                check_latents(h, self.config.latent_channels)?;
                let mut z = h.f_to_kind(self.compute_kind())?;
                if let (true, Some(p)) = (post_quant_conv, &self.post_quant_conv) {
                    z = p.forward(&z);
                }
                return Ok(Some(d.conv_in.forward(&z)));
            }
            return Ok(d.mid_block.part(part - 1, h));
        }
        check_depth(stage, d.up_blocks.len())?;
        Ok(d.up_blocks[stage - 1].part(part, h))
    }

    fn has_post_quant_conv(&self) -> bool {
        self.post_quant_conv.is_some()
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }

    fn named_weights(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }

    fn set_requires_grad(&mut self, requires_grad: bool) {
        if requires_grad { self.vs.unfreeze() } else { self.vs.freeze() }
    }
}
