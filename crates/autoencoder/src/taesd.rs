//! The TAESD family of tiny autoencoders (Ollin Boer Bohan, MIT): taesd, taesdxl (4 latent
//! channels), taesd3, taef1 (16), taef2 (32, with a "pool" branch on the lowest-resolution
//! blocks). Module names are the original `nn.Sequential` indices (`1.conv.0.weight`, ...),
//! so the published `.pth` and `.safetensors` files load as they are.

use std::path::{Path, PathBuf};

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::autoencoder::{
    Autoencoder, FeatureLayer, LatentDistribution, check_depth, check_images, check_latents,
};
use crate::codec::LatentCodec;
use crate::error::{AutoencoderError, Result, invalid};

/// Width of every TAESD layer.
const WIDTH: i64 = 64;

/// Which member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaesdVariant {
    /// SD 1.x / 2.x latents (4 channels).
    Taesd,
    /// SDXL latents (4 channels).
    Taesdxl,
    /// SD3 latents (16 channels).
    Taesd3,
    /// FLUX.1 latents (16 channels).
    Taef1,
    /// FLUX.2 latents (32 channels, pool branch at the lowest resolution).
    Taef2,
}

impl TaesdVariant {
    /// Every variant, with its file-name stem.
    pub const ALL: [(TaesdVariant, &'static str); 5] = [
        (Self::Taesdxl, "taesdxl"),
        (Self::Taesd3, "taesd3"),
        (Self::Taef1, "taef1"),
        (Self::Taef2, "taef2"),
        (Self::Taesd, "taesd"),
    ];

    /// The variant a file name starts with (`taef2_decoder.pth` -> `Taef2`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, stem)| name.starts_with(stem)).map(|(v, _)| *v)
    }

    /// The file-name stem (`taef2`).
    pub fn stem(self) -> &'static str {
        Self::ALL.iter().find(|(v, _)| *v == self).map_or("taesd", |(_, s)| s)
    }

    /// Latent channels.
    pub fn latent_channels(self) -> i64 {
        match self {
            Self::Taesd | Self::Taesdxl => 4,
            Self::Taesd3 | Self::Taef1 => 16,
            Self::Taef2 => 32,
        }
    }

    fn has_pool(self) -> bool {
        self == Self::Taef2
    }
}

/// `1x1 conv (C -> 4C) -> GroupNorm(4) -> ReLU -> 1x1 conv (4C -> C)`, added to the input.
#[derive(Debug)]
struct Pool {
    expand: nn::Conv2D,
    norm: nn::GroupNorm,
    project: nn::Conv2D,
}

/// `relu(conv(x) + x)` with `conv = conv3x3 -> relu -> conv3x3 -> relu -> conv3x3`, after
/// `x += pool(x)` where the block has a pool branch. `(B, 64, H, W) -> (B, 64, H, W)`.
#[derive(Debug)]
struct Block {
    convs: [nn::Conv2D; 3],
    pool: Option<Pool>,
}

fn conv3(p: nn::Path, c_in: i64, c_out: i64, stride: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, 3, nn::ConvConfig { stride, padding: 1, bias, ..Default::default() })
}

fn conv1(p: nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, 1, nn::ConvConfig { bias: false, ..Default::default() })
}

impl Block {
    fn new(p: nn::Path, pool: bool) -> Self {
        let c = &p / "conv";
        let pool = pool.then(|| {
            let q = &p / "pool";
            Pool {
                expand: conv1(&q / "0", WIDTH, 4 * WIDTH),
                norm: nn::group_norm(&q / "1", 4, 4 * WIDTH, Default::default()),
                project: conv1(&q / "3", 4 * WIDTH, WIDTH),
            }
        });
        Self {
            convs: [
                conv3(&c / "0", WIDTH, WIDTH, 1, true),
                conv3(&c / "2", WIDTH, WIDTH, 1, true),
                conv3(&c / "4", WIDTH, WIDTH, 1, true),
            ],
            pool,
        }
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = match &self.pool {
            Some(p) => x + p.project.forward(&p.norm.forward(&p.expand.forward(x)).relu()),
            None => x.shallow_clone(),
        };
        let h = self.convs[0].forward(&x).relu();
        let h = self.convs[1].forward(&h).relu();
        (self.convs[2].forward(&h) + x).relu()
    }
}

/// One entry of the original `nn.Sequential`.
#[derive(Debug)]
enum Layer {
    Conv(nn::Conv2D),
    Block(Box<Block>),
    Relu,
    /// `tanh(x / 3) * 3`.
    Clamp,
    /// 2x nearest.
    Upsample,
}

impl Module for Layer {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Conv(c) => c.forward(x),
            Self::Block(b) => b.forward(x),
            Self::Relu => x.relu(),
            Self::Clamp => (x / 3.0).tanh() * 3.0,
            Self::Upsample => {
                let (_, _, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
                x.upsample_nearest2d([2 * h, 2 * w], None, None)
            }
        }
    }
}

fn encoder_layers(p: &nn::Path, v: TaesdVariant) -> Vec<Layer> {
    let mut layers = vec![
        Layer::Conv(conv3(p / "0", 3, WIDTH, 1, true)),
        Layer::Block(Box::new(Block::new(p / "1", false))),
    ];
    for stage in 0..3 {
        let base = 2 + 4 * stage;
        layers.push(Layer::Conv(conv3(p / base, WIDTH, WIDTH, 2, false)));
        for j in 1..=3 {
            layers.push(Layer::Block(Box::new(Block::new(
                p / (base + j),
                stage == 2 && v.has_pool(),
            ))));
        }
    }
    layers.push(Layer::Conv(conv3(p / "14", WIDTH, v.latent_channels(), 1, true)));
    layers
}

/// Decoder layers and the index of the last layer of each feature stage.
fn decoder_layers(p: &nn::Path, v: TaesdVariant) -> (Vec<Layer>, [usize; 4]) {
    let mut layers = vec![
        Layer::Clamp,
        Layer::Conv(conv3(p / "1", v.latent_channels(), WIDTH, 1, true)),
        Layer::Relu,
    ];
    for j in 3..=5 {
        layers.push(Layer::Block(Box::new(Block::new(p / j, v.has_pool()))));
    }
    for stage in 0..3 {
        let base = 6 + 5 * stage;
        layers.push(Layer::Upsample);
        layers.push(Layer::Conv(conv3(p / (base + 1), WIDTH, WIDTH, 1, false)));
        let blocks = if stage == 2 { 1 } else { 3 };
        for j in 0..blocks {
            layers.push(Layer::Block(Box::new(Block::new(p / (base + 2 + j), false))));
        }
    }
    layers.push(Layer::Conv(conv3(p / "19", WIDTH, 3, 1, true)));
    (layers, [5, 10, 15, 18])
}

/// A TAESD-family autoencoder: images in `[0, 1]`, 8x downsampling, deterministic latents.
#[derive(Debug)]
pub struct Taesd {
    variant: TaesdVariant,
    codec: LatentCodec,
    encoder_vs: nn::VarStore,
    decoder_vs: nn::VarStore,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    stage_ends: [usize; 4],
}

impl Taesd {
    /// A randomly initialised model of `variant` with weights of dtype `kind`.
    pub fn new(variant: TaesdVariant, device: Device, kind: Kind) -> Self {
        let mut encoder_vs = nn::VarStore::new(device);
        let mut decoder_vs = nn::VarStore::new(device);
        let encoder = encoder_layers(&encoder_vs.root(), variant);
        let (decoder, stage_ends) = decoder_layers(&decoder_vs.root(), variant);
        encoder_vs.set_kind(kind);
        decoder_vs.set_kind(kind);
        let codec =
            LatentCodec::preset("taesd").unwrap_or_else(|_| unreachable!("taesd is a preset"));
        Self { variant, codec, encoder_vs, decoder_vs, encoder, decoder, stage_ends }
    }

    /// Loads an encoder and a decoder file (`.pth` zip state dict or `.safetensors`).
    pub fn from_files(
        variant: TaesdVariant,
        encoder: &Path,
        decoder: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let model = Self::new(variant, device, kind);
        lpl_tensor_io::load_file(&model.encoder_vs, encoder)?;
        lpl_tensor_io::load_file(&model.decoder_vs, decoder)?;
        Ok(model)
    }

    /// Finds `<variant>_encoder` and `<variant>_decoder` (`.safetensors` preferred over
    /// `.pth`) in `dir` and loads them; the variant follows the file names.
    pub fn from_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let (variant, encoder, decoder) = find_pair(dir)?;
        Self::from_files(variant, &encoder, &decoder, device, kind)
    }

    /// Which member of the family this is.
    pub fn variant(&self) -> TaesdVariant {
        self.variant
    }

    /// The encoder's and the decoder's weights.
    pub fn var_stores(&self) -> (&nn::VarStore, &nn::VarStore) {
        (&self.encoder_vs, &self.decoder_vs)
    }

    /// The dtype of its weights (encoder and decoder share it), read from one tensor.
    fn compute_kind(&self) -> Kind {
        match &self.decoder[1] {
            Layer::Conv(c) => c.ws.kind(),
            _ => Kind::Float,
        }
    }
}

/// The TAESD encoder/decoder pair in `dir`.
pub fn find_pair(dir: &Path) -> Result<(TaesdVariant, PathBuf, PathBuf)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| AutoencoderError::Io { path: dir.to_path_buf(), source })?;
    let mut names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    for ext in ["safetensors", "pth"] {
        for (variant, stem) in TaesdVariant::ALL {
            let enc = format!("{stem}_encoder.{ext}");
            let dec = format!("{stem}_decoder.{ext}");
            if names.contains(&enc) && names.contains(&dec) {
                return Ok((variant, dir.join(enc), dir.join(dec)));
            }
        }
    }
    Err(invalid(
        "ae",
        format!(
            "{} holds no TAESD pair (<name>_encoder / <name>_decoder .safetensors or .pth, name one of taesd, taesdxl, taesd3, taef1, taef2)",
            dir.display()
        ),
    ))
}

impl Autoencoder for Taesd {
    fn image_channels(&self) -> i64 {
        3
    }

    fn latent_channels(&self) -> i64 {
        self.variant.latent_channels()
    }

    fn downsample_factor(&self) -> i64 {
        8
    }

    fn codec(&self) -> &LatentCodec {
        &self.codec
    }

    /// `(B, 3, H, W)` in `[0, 1]` -> `(B, latent, H / 8, W / 8)` (deterministic).
    fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        check_images(images, 3, 8)?;
        let mut h = images.f_to_kind(self.compute_kind())?;
        for layer in &self.encoder {
            h = layer.forward(&h);
        }
        Ok(LatentDistribution { mean: h, logvar: None })
    }

    /// `(B, latent, h, w)` -> `(B, 3, 8h, 8w)`, nominally `[0, 1]` (not clamped).
    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        check_latents(z, self.latent_channels())?;
        let mut h = z.f_to_kind(self.compute_kind())?;
        for layer in &self.decoder {
            h = layer.forward(&h);
        }
        Ok(h)
    }

    fn feature_layers(&self) -> Vec<FeatureLayer> {
        self.stage_ends
            .iter()
            .enumerate()
            .map(|(i, end)| FeatureLayer {
                name: end.to_string(),
                channels: WIDTH,
                upscale: 1 << i,
            })
            .collect()
    }

    fn decode_features(
        &self,
        z: &Tensor,
        depth: usize,
        _post_quant_conv: bool,
    ) -> Result<Vec<Tensor>> {
        check_latents(z, self.latent_channels())?;
        check_depth(depth, self.stage_ends.len() - 1)?;
        let mut h = z.f_to_kind(self.compute_kind())?;
        let mut out = Vec::with_capacity(depth + 1);
        for (i, layer) in self.decoder[..=self.stage_ends[depth]].iter().enumerate() {
            h = layer.forward(&h);
            if self.stage_ends.contains(&i) {
                out.push(h.shallow_clone());
            }
        }
        Ok(out)
    }

    fn decode_stage(
        &self,
        h: &Tensor,
        stage: usize,
        _post_quant_conv: bool,
    ) -> Result<Option<Tensor>> {
        check_depth(stage, self.stage_ends.len() - 1)?;
        let (first, mut h) = if stage == 0 {
            check_latents(h, self.latent_channels())?;
            (0, h.f_to_kind(self.compute_kind())?)
        } else {
            (self.stage_ends[stage - 1] + 1, h.shallow_clone())
        };
        for layer in &self.decoder[first..=self.stage_ends[stage]] {
            h = layer.forward(&h);
        }
        Ok(Some(h))
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut p = self.encoder_vs.trainable_variables();
        p.extend(self.decoder_vs.trainable_variables());
        p
    }

    fn named_weights(&self) -> Vec<(String, Tensor)> {
        let prefixed = |prefix: &str, vs: &nn::VarStore| -> Vec<(String, Tensor)> {
            vs.variables().into_iter().map(|(k, v)| (format!("{prefix}.{k}"), v)).collect()
        };
        let mut w = prefixed("encoder", &self.encoder_vs);
        w.extend(prefixed("decoder", &self.decoder_vs));
        w
    }

    fn set_requires_grad(&mut self, requires_grad: bool) {
        for vs in [&mut self.encoder_vs, &mut self.decoder_vs] {
            if requires_grad { vs.unfreeze() } else { vs.freeze() }
        }
    }
}
