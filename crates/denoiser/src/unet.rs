//! A UNet of diffusers' `UNet2DModel` family (the DDPM / ADM-style image UNet), with its
//! module names: ResNet blocks with a time embedding, self-attention at chosen levels,
//! skip connections, class embedding added to the time embedding.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{Conditioning, Denoiser, check_inputs, weights_kind};
use crate::embeddings::{LabelDropout, TimestepEmbedding, timestep_embedding};
use crate::error::{DenoiserError, Result, invalid};

fn four() -> i64 {
    4
}
fn two() -> i64 {
    2
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".to_string()
}
fn thirty_two() -> i64 {
    32
}
fn eps() -> f64 {
    1e-5
}
fn one_f() -> f64 {
    1.0
}
fn conv_type() -> String {
    "conv".to_string()
}
fn positional() -> String {
    "positional".to_string()
}
fn default_channels() -> Vec<i64> {
    vec![224, 448, 672, 896]
}
fn default_down() -> Vec<String> {
    ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
        .map(String::from)
        .to_vec()
}
fn default_up() -> Vec<String> {
    ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec()
}
fn label_dropout() -> f64 {
    0.1
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2D".to_string())
}

/// A `UNet2DModel` configuration (diffusers' config.json fields plus `class_dropout_prob`).
/// `num_class_embeds` counts the null class: `classes + 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Input size (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    /// Channels in.
    #[serde(default = "four")]
    pub in_channels: i64,
    /// Channels out.
    #[serde(default = "four")]
    pub out_channels: i64,
    /// Only `false`.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Only `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Only `None` (4 x `block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    /// Sinusoid order.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoids.
    #[serde(default)]
    pub freq_shift: f64,
    /// `DownBlock2D` or `AttnDownBlock2D` per level.
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    /// `UpBlock2D` or `AttnUpBlock2D` per level (deepest first).
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<i64>,
    /// ResNet blocks per down level (up levels have one more).
    #[serde(default = "two")]
    pub layers_per_block: i64,
    /// Only 1.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Only 1 (a 3x3 stride-2 convolution with padding 1).
    #[serde(default = "one_i")]
    pub downsample_padding: i64,
    /// Only `conv`.
    #[serde(default = "conv_type")]
    pub downsample_type: String,
    /// Only `conv`.
    #[serde(default = "conv_type")]
    pub upsample_type: String,
    /// Only 0.
    #[serde(default)]
    pub dropout: f64,
    /// Only `silu`.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Channels per attention head (`None`: one head per level).
    #[serde(default)]
    pub attention_head_dim: Option<i64>,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Only `None` (the resnet groups).
    #[serde(default)]
    pub attn_norm_num_groups: Option<i64>,
    /// GroupNorm epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Only `default`.
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Self-attention in the mid block.
    #[serde(default = "yes")]
    pub add_attention: bool,
    /// Only `None` (an embedding table).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Rows of the class table, `classes + 1` (the last is the null class); `None`:
    /// unconditional.
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
    /// Informational.
    #[serde(default)]
    pub num_train_timesteps: Option<i64>,
    /// Only `UNetMidBlock2D`.
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    /// Probability of replacing a label by the null class in training.
    #[serde(default = "label_dropout")]
    pub class_dropout_prob: f64,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
}

fn one_i() -> i64 {
    1
}
fn default_shift() -> String {
    "default".to_string()
}

impl Default for UNetConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

/// Preset names.
pub const UNET_PRESETS: [&str; 2] = ["unet-tiny", "unet-small"];

impl UNetConfig {
    /// `unet-tiny` (2 levels of 32/64, attention at the lower, 10 classes) and
    /// `unet-small` (3 levels of 64/128/256, attention at the two lower, 10 classes).
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self {
            num_class_embeds: Some(11),
            layers_per_block: 1,
            norm_num_groups: 16,
            ..Self::default()
        };
        Ok(match name {
            "unet-tiny" => Self {
                block_out_channels: vec![32, 64],
                down_block_types: ["DownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec(),
                up_block_types: ["AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec(),
                attention_head_dim: Some(32),
                ..base
            },
            "unet-small" => Self {
                block_out_channels: vec![64, 128, 256],
                down_block_types: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
                    .map(String::from)
                    .to_vec(),
                up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
                    .map(String::from)
                    .to_vec(),
                attention_head_dim: Some(64),
                layers_per_block: 2,
                ..base
            },
            _ => {
                return Err(invalid(
                    "preset",
                    format!("unknown `{name}`; known: {}", UNET_PRESETS.join(", ")),
                ));
            }
        })
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DenoiserError::ConfigFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| DenoiserError::ConfigFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(invalid("block_out_channels", "must have at least one entry"));
        }
        if let Some(c) =
            self.block_out_channels.iter().find(|c| **c < 1 || **c % self.norm_num_groups != 0)
        {
            return Err(invalid(
                "block_out_channels",
                format!("{c} is not a multiple of norm_num_groups"),
            ));
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(invalid("down_block_types", "one down and one up block type per level"));
        }
        if let Some(t) =
            self.down_block_types.iter().find(|t| *t != "DownBlock2D" && *t != "AttnDownBlock2D")
        {
            return Err(invalid("down_block_types", format!("unsupported `{t}`")));
        }
        if let Some(t) =
            self.up_block_types.iter().find(|t| *t != "UpBlock2D" && *t != "AttnUpBlock2D")
        {
            return Err(invalid("up_block_types", format!("unsupported `{t}`")));
        }
        let checks: [(&'static str, bool); 10] = [
            ("center_input_sample", !self.center_input_sample),
            ("time_embedding_type", self.time_embedding_type == "positional"),
            ("time_embedding_dim", self.time_embedding_dim.is_none()),
            ("act_fn", self.act_fn == "silu"),
            ("resnet_time_scale_shift", self.resnet_time_scale_shift == "default"),
            ("class_embed_type", self.class_embed_type.is_none()),
            ("downsample_type", self.downsample_type == "conv" && self.downsample_padding == 1),
            ("upsample_type", self.upsample_type == "conv"),
            (
                "mid_block_type",
                self.mid_block_type.as_deref() == Some("UNetMidBlock2D")
                    && self.mid_block_scale_factor == 1.0,
            ),
            ("dropout", self.dropout == 0.0 && self.attn_norm_num_groups.is_none()),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(invalid(field, "this value is not supported"));
        }
        if let Some(n) = self.num_class_embeds
            && n < 2
        {
            return Err(invalid("num_class_embeds", format!("must be classes + 1 >= 2, got {n}")));
        }
        Ok(())
    }

    /// Time embedding width (4 x the first level's channels).
    pub fn time_embed_dim(&self) -> i64 {
        4 * self.block_out_channels[0]
    }
}

/// ResNet block with the time embedding added after the first convolution.
#[derive(Debug)]
struct Resnet {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, k, nn::ConvConfig { stride, padding: k / 2, ..Default::default() })
}

fn group_norm(p: nn::Path, c: &UNetConfig, channels: i64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        c.norm_num_groups,
        channels,
        nn::GroupNormConfig { eps: c.norm_eps, ..Default::default() },
    )
}

impl Resnet {
    fn new(p: nn::Path, c: &UNetConfig, c_in: i64, c_out: i64) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", c, c_in),
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1),
            time_emb_proj: nn::linear(
                &p / "time_emb_proj",
                c.time_embed_dim(),
                c_out,
                Default::default(),
            ),
            norm2: group_norm(&p / "norm2", c, c_out),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1),
            conv_shortcut: (c_in != c_out).then(|| conv(&p / "conv_shortcut", c_in, c_out, 1, 1)),
        }
    }

    fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = h + self.time_emb_proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Multi-head self-attention over H*W with a pre-GroupNorm and a residual.
#[derive(Debug)]
struct Attention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &UNetConfig, channels: i64) -> Self {
        let lin = |name: &str| nn::linear(&p / name, channels, channels, Default::default());
        Self {
            group_norm: group_norm(&p / "group_norm", c, channels),
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            to_out: nn::linear(&p / "to_out" / "0", channels, channels, Default::default()),
            heads: channels / c.attention_head_dim.unwrap_or(channels).max(1),
        }
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let tokens = self.group_norm.forward(x).view([b, c, h * w]).transpose(1, 2);
        let split = |l: &nn::Linear| {
            l.forward(&tokens).view([b, h * w, self.heads, c / self.heads]).transpose(1, 2)
        };
        let out = lpl_torch_ext::attention::scaled_dot_product(
            &split(&self.to_q),
            &split(&self.to_k),
            &split(&self.to_v),
        );
        let out = self.to_out.forward(&out.transpose(1, 2).reshape([b, h * w, c]));
        out.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// One level: resnets, optional attentions after each, optional resampler.
#[derive(Debug)]
struct Level {
    resnets: Vec<Resnet>,
    attentions: Vec<Attention>,
    resample: Option<nn::Conv2D>,
}

impl Level {
    fn step(&self, i: usize, h: &Tensor, temb: &Tensor) -> Tensor {
        let h = self.resnets[i].forward(h, temb);
        match self.attentions.get(i) {
            Some(a) => a.forward(&h),
            None => h,
        }
    }
}

/// A class-conditional UNet2DModel.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    vs: nn::VarStore,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<nn::Embedding>,
    down: Vec<Level>,
    mid: (Resnet, Option<Attention>, Resnet),
    up: Vec<Level>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    label_dropout: LabelDropout,
}

impl UNet {
    /// A new model (libtorch's default initialisation) with weights of dtype `kind`.
    pub fn new(config: &UNetConfig, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = config;
        let boc = &c.block_out_channels;
        let te = c.time_embed_dim();
        let mut down = Vec::new();
        let mut c_prev = boc[0];
        for (i, &c_out) in boc.iter().enumerate() {
            let p = &root / "down_blocks" / i;
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    Resnet::new(&p / "resnets" / j, c, if j == 0 { c_prev } else { c_out }, c_out)
                })
                .collect();
            let attentions = if c.down_block_types[i] == "AttnDownBlock2D" {
                (0..c.layers_per_block)
                    .map(|j| Attention::new(&p / "attentions" / j, c, c_out))
                    .collect()
            } else {
                Vec::new()
            };
            let resample = (i + 1 < boc.len())
                .then(|| conv(&p / "downsamplers" / "0" / "conv", c_out, c_out, 3, 2));
            down.push(Level { resnets, attentions, resample });
            c_prev = c_out;
        }
        let top = boc[boc.len() - 1];
        let mp = &root / "mid_block";
        let mid = (
            Resnet::new(&mp / "resnets" / "0", c, top, top),
            c.add_attention.then(|| Attention::new(&mp / "attentions" / "0", c, top)),
            Resnet::new(&mp / "resnets" / "1", c, top, top),
        );
        let reversed: Vec<i64> = boc.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut out_c = reversed[0];
        for i in 0..reversed.len() {
            let prev_out = out_c;
            out_c = reversed[i];
            let in_c = reversed[(i + 1).min(reversed.len() - 1)];
            let p = &root / "up_blocks" / i;
            let n = c.layers_per_block + 1;
            let resnets = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { in_c } else { out_c };
                    let res_in = if j == 0 { prev_out } else { out_c };
                    Resnet::new(&p / "resnets" / j, c, res_in + skip, out_c)
                })
                .collect();
            let attentions = if c.up_block_types[i] == "AttnUpBlock2D" {
                (0..n).map(|j| Attention::new(&p / "attentions" / j, c, out_c)).collect()
            } else {
                Vec::new()
            };
            let resample = (i + 1 < reversed.len())
                .then(|| conv(&p / "upsamplers" / "0" / "conv", out_c, out_c, 3, 1));
            up.push(Level { resnets, attentions, resample });
        }
        let classes = c.num_class_embeds.map(|n| n - 1);
        let conv_in = conv(&root / "conv_in", c.in_channels, boc[0], 3, 1);
        let time_embedding = TimestepEmbedding::new(&root / "time_embedding", boc[0], te);
        let class_embedding = c
            .num_class_embeds
            .map(|n| nn::embedding(&root / "class_embedding", n, te, Default::default()));
        let conv_norm_out = group_norm(&root / "conv_norm_out", c, boc[0]);
        let conv_out = conv(&root / "conv_out", boc[0], c.out_channels, 3, 1);
        vs.set_kind(kind);
        Ok(Self {
            config: c.clone(),
            vs,
            conv_in,
            time_embedding,
            class_embedding,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            label_dropout: LabelDropout {
                num_classes: classes.unwrap_or(0),
                prob: c.class_dropout_prob,
            },
        })
    }

    /// Loads a diffusers `UNet2DModel` folder, converted to `kind`.
    pub fn from_diffusers_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        let mut model = Self::new(&config, device, Kind::Float)?;
        lpl_tensor_io::load_file(&model.vs, &dir.join("diffusion_pytorch_model.safetensors"))?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    /// Its configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Labels `(B,)` each replaced by the null class with probability `class_dropout_prob`.
    pub fn drop_labels(&self, labels: &Tensor) -> Tensor {
        self.label_dropout.apply(labels)
    }
}

impl Denoiser for UNet {
    fn forward_t(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, _, _) = check_inputs(x_t, t, c.in_channels, 1 << (c.block_out_channels.len() - 1))?;
        let kind = weights_kind(&self.conv_in.ws);
        let t_emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
            .to_kind(kind);
        let mut temb = self.time_embedding.forward(&t_emb);
        if let Some(table) = &self.class_embedding {
            let labels = self.label_dropout.labels(cond, b, x_t.device(), train)?;
            temb += crate::embeddings::lookup(table, &labels)?;
        }
        let mut h = self.conv_in.forward(&x_t.to_kind(kind));
        let mut skips = vec![h.shallow_clone()];
        for level in &self.down {
            for i in 0..level.resnets.len() {
                h = level.step(i, &h, &temb);
                skips.push(h.shallow_clone());
            }
            if let Some(d) = &level.resample {
                h = d.forward(&h);
                skips.push(h.shallow_clone());
            }
        }
        h = self.mid.0.forward(&h, &temb);
        if let Some(a) = &self.mid.1 {
            h = a.forward(&h);
        }
        h = self.mid.2.forward(&h, &temb);
        for level in &self.up {
            for i in 0..level.resnets.len() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| DenoiserError::Compute("skip stack exhausted".into()))?;
                h = level.step(i, &Tensor::cat(&[h, skip], 1), &temb);
            }
            if let Some(u) = &level.resample {
                let (_, _, hh, ww) = h.size4()?;
                h = u.forward(&h.upsample_nearest2d([2 * hh, 2 * ww], None, None));
            }
        }
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).silu()))
    }

    fn in_channels(&self) -> i64 {
        self.config.in_channels
    }

    fn out_channels(&self) -> i64 {
        self.config.out_channels
    }

    fn num_classes(&self) -> Option<i64> {
        self.config.num_class_embeds.map(|n| n - 1)
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}
