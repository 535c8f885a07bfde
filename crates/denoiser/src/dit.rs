//! DiT (Peebles & Xie 2023) with module names of diffusers' `DiTTransformer2DModel`, so its
//! `save_pretrained` folders load directly.
//!
//! `x (B, C, H, W)` -> patches `(B, N, D)` + fixed 2-D sin-cos positions -> blocks with
//! adaLN-Zero modulation from `t` and class embeddings -> final adaLN layer -> unpatchify.
//! The published DiT shares one time/label embedder between blocks; diffusers' layout stores
//! one per block (`transformer_blocks.i.norm1.emb`). Both exist here
//! ([`DitConfig::shared_conditioning`]); loading a diffusers folder picks the layout its file
//! has.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{Conditioning, Denoiser, check_inputs, weights_kind};
use crate::embeddings::{LabelDropout, LabelEmbedding, TimestepEmbedding, timestep_embedding};
use crate::error::{DenoiserError, Result, invalid};

fn default_heads() -> i64 {
    16
}
fn default_head_dim() -> i64 {
    72
}
fn four() -> i64 {
    4
}
fn default_layers() -> i64 {
    28
}
fn thirty_two() -> i64 {
    32
}
fn two() -> i64 {
    2
}
fn yes() -> bool {
    true
}
fn gelu_tanh() -> String {
    "gelu-approximate".to_string()
}
fn ada_norm_zero() -> String {
    "ada_norm_zero".to_string()
}
fn norm_eps() -> f64 {
    1e-5
}
fn label_dropout() -> f64 {
    0.1
}

/// A DiT configuration: diffusers' `DiTTransformer2DModel` config.json fields plus ours
/// (`class_dropout_prob`, `qk_norm`, `shared_conditioning`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Attention heads.
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    /// Channels per head; hidden size = heads * head dim.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: i64,
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: i64,
    /// Channels out (default: `in_channels`).
    #[serde(default)]
    pub out_channels: Option<i64>,
    /// Transformer blocks.
    #[serde(default = "default_layers")]
    pub num_layers: i64,
    /// Dropout (only 0 is supported).
    #[serde(default)]
    pub dropout: f64,
    /// Unused by DiT (kept for config compatibility).
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Biases in q, k, v.
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// Latent size H = W.
    #[serde(default = "thirty_two")]
    pub sample_size: i64,
    /// Patch size p.
    #[serde(default = "two")]
    pub patch_size: i64,
    /// Only `gelu-approximate`.
    #[serde(default = "gelu_tanh")]
    pub activation_fn: String,
    /// Number of classes (the null class is this index).
    #[serde(default)]
    pub num_embeds_ada_norm: Option<i64>,
    /// Ignored (attention runs in the model dtype).
    #[serde(default)]
    pub upcast_attention: bool,
    /// Only `ada_norm_zero`.
    #[serde(default = "ada_norm_zero")]
    pub norm_type: String,
    /// Only `false` (no affine LayerNorm parameters).
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    /// Epsilon of the MLP LayerNorm.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Probability of replacing a label by the null class in training.
    #[serde(default = "label_dropout")]
    pub class_dropout_prob: f64,
    /// LayerNorm on queries and keys per head (`attn1.norm_q`, `attn1.norm_k`).
    #[serde(default)]
    pub qk_norm: bool,
    /// One time/label embedder for all blocks (the published DiT) instead of one per block
    /// (diffusers' layout). `None`: shared for new models, as found in a loaded file.
    #[serde(default)]
    pub shared_conditioning: Option<bool>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
}

impl Default for DitConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

/// Preset names: `dit-{s,b,l,xl}-{2,4,8}`, `dit-tiny` and `dit-mini`.
pub const DIT_PRESETS: [&str; 14] = [
    "dit-s-2", "dit-s-4", "dit-s-8", "dit-b-2", "dit-b-4", "dit-b-8", "dit-l-2", "dit-l-4",
    "dit-l-8", "dit-xl-2", "dit-xl-4", "dit-xl-8", "dit-tiny", "dit-mini",
];

impl DitConfig {
    /// The published sizes (S: 12 x 384, B: 12 x 768, L: 24 x 1024, XL: 28 x 1152; 64-wide
    /// heads, 72 for XL) at 32x32x4 latents and 1000 classes, patch 2, 4 or 8; `dit-tiny`
    /// (2 layers, 2 heads of 16, 8x8 input, 10 classes) for tests; `dit-mini` (6 layers, 4 heads
    /// of 32, 8x8 input, 10 classes) for the embedded Fashion-MNIST default.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self {
            num_embeds_ada_norm: Some(1000),
            shared_conditioning: Some(true),
            ..Self::default()
        };
        if name == "dit-mini" {
            return Ok(Self {
                num_attention_heads: 4,
                attention_head_dim: 32,
                num_layers: 6,
                sample_size: 8,
                num_embeds_ada_norm: Some(10),
                ..base
            });
        }
        if name == "dit-tiny" {
            return Ok(Self {
                num_attention_heads: 2,
                attention_head_dim: 16,
                num_layers: 2,
                sample_size: 8,
                num_embeds_ada_norm: Some(10),
                ..base
            });
        }
        let unknown =
            || invalid("preset", format!("unknown `{name}`; known: {}", DIT_PRESETS.join(", ")));
        let mut parts = name.strip_prefix("dit-").ok_or_else(unknown)?.split('-');
        let (size, patch) = (parts.next().ok_or_else(unknown)?, parts.next().ok_or_else(unknown)?);
        let (layers, heads, head_dim) = match size {
            "s" => (12, 6, 64),
            "b" => (12, 12, 64),
            "l" => (24, 16, 64),
            "xl" => (28, 16, 72),
            _ => return Err(unknown()),
        };
        let patch_size = match patch {
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return Err(unknown()),
        };
        Ok(Self {
            num_layers: layers,
            num_attention_heads: heads,
            attention_head_dim: head_dim,
            patch_size,
            ..base
        })
    }

    /// Reads and validates a diffusers `config.json`: `DiTTransformer2DModel`'s, or the older
    /// `Transformer2DModel`'s the Hub's DiT checkpoints ship (facebook/DiT-XL-2-256), whose
    /// extra fields must then have the values a DiT has.
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| DenoiserError::ConfigFile { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some(fields) = value.as_object_mut() {
            // Transformer2DModel's fields for inputs a DiT does not take: (field, allowed)
            let dit_values: [(&str, &[serde_json::Value]); 10] = [
                ("cross_attention_dim", &[serde_json::Value::Null]),
                ("num_vector_embeds", &[serde_json::Value::Null]),
                ("caption_channels", &[serde_json::Value::Null]),
                ("only_cross_attention", &[serde_json::Value::Bool(false)]),
                ("double_self_attention", &[serde_json::Value::Bool(false)]),
                (
                    "use_additional_conditions",
                    &[serde_json::Value::Null, serde_json::Value::Bool(false)],
                ),
                ("attention_type", &[serde_json::Value::String("default".into())]),
                (
                    "interpolation_scale",
                    &[serde_json::Value::Null, serde_json::json!(1), serde_json::json!(1.0)],
                ),
                (
                    "use_linear_projection",
                    &[serde_json::Value::Bool(false), serde_json::Value::Bool(true)],
                ),
                ("num_positional_embeddings", &[serde_json::Value::Null]),
            ];
            for (field, allowed) in dit_values {
                if let Some(v) = fields.remove(field)
                    && !allowed.contains(&v)
                {
                    return Err(err(format!(
                        "`{field}` = {v}: not a DiT (a DiT has {})",
                        allowed.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" or ")
                    )));
                }
            }
        }
        let config: Self = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Hidden size D.
    pub fn hidden_size(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels.
    pub fn out_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("num_layers", self.num_layers),
            ("patch_size", self.patch_size),
            ("sample_size", self.sample_size),
        ] {
            if v < 1 {
                return Err(invalid(field, format!("must be >= 1, got {v}")));
            }
        }
        if self.sample_size % self.patch_size != 0 {
            return Err(invalid(
                "patch_size",
                format!("{} does not divide sample_size {}", self.patch_size, self.sample_size),
            ));
        }
        if self.hidden_size() % 4 != 0 {
            return Err(invalid(
                "attention_head_dim",
                "hidden size must be a multiple of 4 (2-D sin-cos positions)",
            ));
        }
        match self.num_embeds_ada_norm {
            Some(n) if n >= 1 => {}
            other => {
                return Err(invalid(
                    "num_embeds_ada_norm",
                    format!("must be a class count >= 1, got {other:?}"),
                ));
            }
        }
        if self.norm_type != "ada_norm_zero" {
            return Err(invalid(
                "norm_type",
                format!("only `ada_norm_zero`, got `{}`", self.norm_type),
            ));
        }
        if self.activation_fn != "gelu-approximate" {
            return Err(invalid(
                "activation_fn",
                format!("only `gelu-approximate`, got `{}`", self.activation_fn),
            ));
        }
        if self.norm_elementwise_affine {
            return Err(invalid("norm_elementwise_affine", "only `false` is supported"));
        }
        if self.dropout != 0.0 {
            return Err(invalid("dropout", "only 0 is supported"));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return Err(invalid(
                "class_dropout_prob",
                format!("must be in [0, 1), got {}", self.class_dropout_prob),
            ));
        }
        Ok(())
    }
}

/// diffusers' `get_2d_sincos_pos_embed` for a `gh x gw` grid: `(gh * gw, dim)` f32, the first
/// half encoding the column (x) coordinate and the second the row, each `[sin, cos]` over
/// `dim / 4` frequencies `10000^(-i / (dim / 4))`. Positions are `0..g` on the grid the
/// model was built for (`base` patches a side); another grid is rescaled to it, as diffusers'
/// `PatchEmbed` does (`i / (g / base)`, in f32 as there, interpolation scale 1), so that a
/// model runs at other resolutions. (The original DiT keeps a fixed `pos_embed` buffer of
/// its training grid and cannot run at another size.)
pub fn sincos_pos_embed(dim: i64, gh: i64, gw: i64, base: i64) -> Tensor {
    let quarter = dim / 4;
    let omega: Vec<f64> =
        (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let scaled = |i: i64, g: i64| -> f64 {
        if g == base { i as f64 } else { f64::from(i as f32 / (g as f32 / base as f32)) }
    };
    let mut out = Vec::with_capacity((gh * gw * dim) as usize);
    for r in 0..gh {
        for c in 0..gw {
            for pos in [scaled(c, gw), scaled(r, gh)] {
                out.extend(omega.iter().map(|w| (pos * w).sin()));
                out.extend(omega.iter().map(|w| (pos * w).cos()));
            }
        }
    }
    Tensor::from_slice(&out).view([gh * gw, dim]).to_kind(Kind::Float)
}

/// Time + label embedding: `(B,)`, `(B,)` -> `(B, D)`.
#[derive(Debug)]
struct CombinedEmbedding {
    timestep_embedder: TimestepEmbedding,
    class_embedder: LabelEmbedding,
}

impl CombinedEmbedding {
    fn new(p: nn::Path, dim: i64, classes: i64) -> Self {
        Self {
            timestep_embedder: TimestepEmbedding::new(&p / "timestep_embedder", 256, dim),
            class_embedder: LabelEmbedding::new(&p / "class_embedder", classes, dim),
        }
    }

    fn forward(&self, t: &Tensor, labels: &Tensor, kind: Kind) -> crate::Result<Tensor> {
        let t_emb =
            self.timestep_embedder.forward(&timestep_embedding(t, 256, true, 1.0).to_kind(kind));
        Ok(t_emb + self.class_embedder.lookup(labels)?)
    }
}

/// Multi-head self-attention over tokens `(B, N, D)`.
#[derive(Debug)]
struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    norm_qk: Option<(nn::LayerNorm, nn::LayerNorm)>,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, dim: i64, heads: i64, head_dim: i64, bias: bool, qk_norm: bool) -> Self {
        let lin = |name: &str| {
            nn::linear(&p / name, dim, dim, nn::LinearConfig { bias, ..Default::default() })
        };
        let ln = |name: &str| {
            nn::layer_norm(
                &p / name,
                vec![head_dim],
                nn::LayerNormConfig { eps: 1e-6, ..Default::default() },
            )
        };
        Self {
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            to_out: nn::linear(&p / "to_out" / "0", dim, dim, Default::default()),
            norm_qk: qk_norm.then(|| (ln("norm_q"), ln("norm_k"))),
            heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().unwrap_or((0, 0, 0));
        let split = |t: Tensor| t.view([b, n, self.heads, d / self.heads]).transpose(1, 2); // (B, H, N, Dh)
        let (mut q, mut k) = (split(self.to_q.forward(x)), split(self.to_k.forward(x)));
        if let Some((nq, nk)) = &self.norm_qk {
            q = nq.forward(&q);
            k = nk.forward(&k);
        }
        let v = split(self.to_v.forward(x));
        let out = lpl_torch_ext::attention::scaled_dot_product(&q, &k, &v);
        self.to_out.forward(&out.transpose(1, 2).reshape([b, n, d]))
    }
}

/// One DiT block with adaLN-Zero (`norm1.linear` produces shift/scale/gate for attention and
/// MLP).
#[derive(Debug)]
struct Block {
    emb: Option<CombinedEmbedding>,
    modulation: nn::Linear,
    attn: Attention,
    ff_in: nn::Linear,
    ff_out: nn::Linear,
    norm_eps: f64,
}

fn layer_norm(x: &Tensor, eps: f64) -> Tensor {
    let d = x.size()[x.dim() - 1];
    x.layer_norm([d], None::<Tensor>, None::<Tensor>, eps, true)
}

fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

impl Block {
    fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let m = self.modulation.forward(&c.silu()).chunk(6, 1);
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let h = modulate(&layer_norm(x, 1e-6), shift_msa, scale_msa);
        let x = x + gate_msa.unsqueeze(1) * self.attn.forward(&h);
        let h = modulate(&layer_norm(&x, self.norm_eps), shift_mlp, scale_mlp);
        let ff = self.ff_out.forward(&self.ff_in.forward(&h).gelu("tanh"));
        &x + gate_mlp.unsqueeze(1) * ff
    }
}

/// A class-conditional DiT.
#[derive(Debug)]
pub struct Dit {
    config: DitConfig,
    vs: nn::VarStore,
    patch: nn::Conv2D,
    blocks: Vec<Block>,
    proj_out_1: nn::Linear,
    proj_out_2: nn::Linear,
    label_dropout: LabelDropout,
}

impl Dit {
    /// A new model with the published initialisation (xavier-uniform linears, N(0, 0.02)
    /// embeddings, zero adaLN modulation and final layer), weights of dtype `kind`.
    pub fn new(config: &DitConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut model = Self::build(config, device)?;
        model.initialize()?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    fn build(config: &DitConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = config.hidden_size();
        let p = config.patch_size;
        let classes = config.num_embeds_ada_norm.unwrap_or(1);
        let shared = config.shared_conditioning.unwrap_or(true);
        let patch = nn::conv2d(
            &root / "pos_embed" / "proj",
            config.in_channels,
            d,
            p,
            nn::ConvConfig { stride: p, ..Default::default() },
        );
        let blocks = (0..config.num_layers)
            .map(|i| {
                let b = &root / "transformer_blocks" / i;
                let norm1 = &b / "norm1";
                Block {
                    emb: (i == 0 || !shared)
                        .then(|| CombinedEmbedding::new(&norm1 / "emb", d, classes)),
                    modulation: nn::linear(&norm1 / "linear", d, 6 * d, Default::default()),
                    attn: Attention::new(
                        &b / "attn1",
                        d,
                        config.num_attention_heads,
                        config.attention_head_dim,
                        config.attention_bias,
                        config.qk_norm,
                    ),
                    ff_in: nn::linear(
                        &b / "ff" / "net" / "0" / "proj",
                        d,
                        4 * d,
                        Default::default(),
                    ),
                    ff_out: nn::linear(&b / "ff" / "net" / "2", 4 * d, d, Default::default()),
                    norm_eps: config.norm_eps,
                }
            })
            .collect();
        // Label dropout is decided once per forward and shared by every block.
        let label_dropout = LabelDropout { num_classes: classes, prob: config.class_dropout_prob };
        let out = p * p * config.out_channels();
        Ok(Self {
            config: DitConfig { shared_conditioning: Some(shared), ..config.clone() },
            proj_out_1: nn::linear(&root / "proj_out_1", d, 2 * d, Default::default()),
            proj_out_2: nn::linear(&root / "proj_out_2", d, out, Default::default()),
            vs,
            patch,
            blocks,
            label_dropout,
        })
    }

    /// Loads a diffusers DiT folder: `config.json` with `diffusion_pytorch_model.safetensors`
    /// (or the torch zip `.bin`, read without executing pickle code), or a pipeline folder as
    /// the Hub ships them (its `transformer/` sub-folder; `DiTTransformer2DModel` or the
    /// older `Transformer2DModel`). Any dtype on disk, converted to `kind`. The
    /// conditioning layout (shared or per block) follows the file.
    pub fn from_diffusers_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let dir = if !dir.join("config.json").is_file()
            && dir.join("transformer/config.json").is_file()
        {
            dir.join("transformer")
        } else {
            dir.to_path_buf()
        };
        let mut config = DitConfig::from_file(&dir.join("config.json"))?;
        let file = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join("diffusion_pytorch_model.safetensors"));
        let tensors = lpl_tensor_io::read_tensors(&file)?;
        if config.shared_conditioning.is_none() {
            let per_block =
                tensors.keys().any(|k| k.starts_with("transformer_blocks.1.norm1.emb."));
            config.shared_conditioning = Some(!per_block);
        }
        let mut model = Self::build(&config, device)?;
        lpl_tensor_io::load_into(&model.vs, &tensors, &file)?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    /// Loads a state dict of the original DiT repository (facebookresearch/DiT, and SiT's,
    /// which shares it): a `.pt`/`.pth` zip read without executing pickle code, either the
    /// bare state dict (DiT-XL-2-256x256.pt) or a training checkpoint's `ema` (else `model`)
    /// entry. Keys are mapped as diffusers' `convert_dit_to_diffusers.py` maps them (`qkv`
    /// split into q, k, v; one shared time/label embedder; the fixed `pos_embed` buffer
    /// dropped: it is recomputed). The architecture is read off the shapes; the head count,
    /// which shapes do not give, is `heads`, else DiT's convention (64 channels a head, 72
    /// for XL's 1152). Unknown or missing keys are errors listing them.
    pub fn from_original(
        path: &Path,
        heads: Option<i64>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let mut tensors = lpl_tensor_io::read_tensors(path)?;
        for prefix in ["ema.", "model."] {
            if tensors.keys().all(|k| !k.starts_with("x_embedder."))
                && tensors.keys().any(|k| k.starts_with(&format!("{prefix}x_embedder.")))
            {
                tensors = tensors
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
                    .collect();
            }
        }
        let err = |message: String| {
            DenoiserError::Weights(lpl_tensor_io::TensorIoError::Format {
                path: path.to_path_buf(),
                message,
            })
        };
        let shape = |k: &str| -> Result<Vec<i64>> {
            tensors
                .get(k)
                .map(Tensor::size)
                .ok_or_else(|| err(format!("missing key `{k}`: not an original DiT state dict")))
        };
        let patch = shape("x_embedder.proj.weight")?;
        let (d, c, p) = (patch[0], patch[1], patch[2]);
        let out = shape("final_layer.linear.weight")?[0] / (p * p);
        let classes = shape("y_embedder.embedding_table.weight")?[0] - 1;
        let depth = (0..)
            .take_while(|i| tensors.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
            .count() as i64;
        let tokens = shape("pos_embed")?.get(1).copied().unwrap_or(0);
        let grid = (tokens as f64).sqrt().round() as i64;
        if grid * grid != tokens {
            return Err(err(format!("pos_embed holds {tokens} positions, not a square grid")));
        }
        let heads = match heads {
            Some(h) => h,
            None if d == 1152 => 16,
            None if d % 64 == 0 => d / 64,
            None => {
                return Err(err(format!("hidden size {d}: give the number of attention heads")));
            }
        };
        let config = DitConfig {
            num_attention_heads: heads,
            attention_head_dim: d / heads,
            in_channels: c,
            out_channels: (out != c).then_some(out),
            num_layers: depth,
            sample_size: grid * p,
            patch_size: p,
            num_embeds_ada_norm: Some(classes),
            shared_conditioning: Some(true),
            ..DitConfig::default()
        };
        let mut mapped = std::collections::BTreeMap::new();
        let mut take = |from: &str, to: &str| -> Result<()> {
            let t = tensors.remove(from).ok_or_else(|| err(format!("missing key `{from}`")))?;
            mapped.insert(to.to_string(), t);
            Ok(())
        };
        for w in ["weight", "bias"] {
            take(&format!("x_embedder.proj.{w}"), &format!("pos_embed.proj.{w}"))?;
            let emb = "transformer_blocks.0.norm1.emb";
            take(
                &format!("t_embedder.mlp.0.{w}"),
                &format!("{emb}.timestep_embedder.linear_1.{w}"),
            )?;
            take(
                &format!("t_embedder.mlp.2.{w}"),
                &format!("{emb}.timestep_embedder.linear_2.{w}"),
            )?;
            take(&format!("final_layer.adaLN_modulation.1.{w}"), &format!("proj_out_1.{w}"))?;
            take(&format!("final_layer.linear.{w}"), &format!("proj_out_2.{w}"))?;
            for i in 0..depth {
                let (o, b) = (format!("blocks.{i}"), format!("transformer_blocks.{i}"));
                take(&format!("{o}.adaLN_modulation.1.{w}"), &format!("{b}.norm1.linear.{w}"))?;
                take(&format!("{o}.attn.proj.{w}"), &format!("{b}.attn1.to_out.0.{w}"))?;
                take(&format!("{o}.mlp.fc1.{w}"), &format!("{b}.ff.net.0.proj.{w}"))?;
                take(&format!("{o}.mlp.fc2.{w}"), &format!("{b}.ff.net.2.{w}"))?;
            }
        }
        take(
            "y_embedder.embedding_table.weight",
            "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight",
        )?;
        for i in 0..depth {
            for w in ["weight", "bias"] {
                let key = format!("blocks.{i}.attn.qkv.{w}");
                let qkv =
                    tensors.remove(&key).ok_or_else(|| err(format!("missing key `{key}`")))?;
                let parts = qkv.f_chunk(3, 0)?;
                for (name, t) in ["to_q", "to_k", "to_v"].iter().zip(parts) {
                    mapped.insert(format!("transformer_blocks.{i}.attn1.{name}.{w}"), t);
                }
            }
        }
        tensors.remove("pos_embed");
        if !tensors.is_empty() {
            let keys: Vec<&String> = tensors.keys().collect();
            return Err(err(format!("unexpected keys for a DiT: {keys:?}")));
        }
        let mut model = Self::build(&config, device)?;
        lpl_tensor_io::load_into(&model.vs, &mapped, path)?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    /// A published DiT or SiT, as [`Self::from_diffusers_dir`] reads a folder and
    /// [`Self::from_original`] a file (`.pt`/`.pth` of the original repositories; `heads`,
    /// else DiT's convention). What `[model] pretrained` and `lpl sample --run` accept.
    pub fn from_pretrained(
        path: &Path,
        heads: Option<i64>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        if path.is_dir() {
            Self::from_diffusers_dir(path, device, kind)
        } else if path.is_file() {
            Self::from_original(path, heads, device, kind)
        } else {
            Err(DenoiserError::Weights(lpl_tensor_io::TensorIoError::Format {
                path: path.to_path_buf(),
                message: "no such file or folder: give a diffusers DiT folder (config.json, \
                          or a pipeline's transformer/) or an original DiT/SiT .pt"
                    .to_string(),
            }))
        }
    }

    /// Sets the probability of dropping a label to the null class in training (a
    /// pretrained model's file does not carry it).
    pub fn set_class_dropout_prob(&mut self, prob: f64) {
        self.config.class_dropout_prob = prob;
        self.label_dropout.prob = prob;
    }

    /// Its configuration.
    pub fn config(&self) -> &DitConfig {
        &self.config
    }

    /// Labels `(B,)` each replaced by the null class with probability `class_dropout_prob`.
    pub fn drop_labels(&self, labels: &Tensor) -> Tensor {
        self.label_dropout.apply(labels)
    }

    fn initialize(&mut self) -> Result<()> {
        let xavier = |t: &Tensor| {
            let s = t.size();
            let fan_in: i64 = s[1..].iter().product();
            let fan_out = s[0] * s[2..].iter().product::<i64>();
            let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
            let _ = t.shallow_clone().uniform_(-a, a);
        };
        tch::no_grad(|| {
            // sorted: the draws must not depend on HashMap order, or initialisation is not
            // reproducible from the seed
            let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in vars {
                let mut t = t.shallow_clone();
                let is_weight = name.ends_with(".weight");
                if name.contains(".norm1.linear.") || name.starts_with("proj_out_") {
                    let _ = t.zero_();
                } else if name.contains("class_embedder") || name.contains("timestep_embedder") {
                    if is_weight {
                        let _ = t.normal_(0.0, 0.02);
                    } else {
                        let _ = t.zero_();
                    }
                } else if name.contains("norm_q") || name.contains("norm_k") {
                    let _ = if is_weight { t.fill_(1.0) } else { t.zero_() };
                } else if is_weight {
                    xavier(&t);
                } else {
                    let _ = t.zero_();
                }
            }
        });
        Ok(())
    }
}

impl Denoiser for Dit {
    fn forward_t(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let p = c.patch_size;
        let (b, h, w) = check_inputs(x_t, t, c.in_channels, p)?;
        let kind = weights_kind(&self.patch.ws);
        let labels = self.label_dropout.labels(cond, b, x_t.device(), train)?;
        let (gh, gw) = (h / p, w / p);
        let base = c.sample_size / p;
        let pos =
            sincos_pos_embed(c.hidden_size(), gh, gw, base).to_device(x_t.device()).to_kind(kind);
        // (B, N, D) tokens, made contiguous once here: the transposed patch output would
        // otherwise carry its (B, D, N) layout through every residual add (`x + ...` keeps
        // the first operand's layout), and each layer norm would copy it to a contiguous
        // buffer forward and backward (26 copies of every step of DiT-mini, 2% of it)
        let mut x = (self.patch.forward(&x_t.to_kind(kind)).flatten(2, 3).transpose(1, 2)
            + pos.unsqueeze(0))
        .contiguous();
        let t = t.to_kind(Kind::Float);
        let first = self.blocks[0].emb.as_ref().map(|e| e.forward(&t, &labels, kind));
        let c0 =
            first.ok_or_else(|| DenoiserError::Compute("block 0 has no embedder".into()))??;
        for (i, block) in self.blocks.iter().enumerate() {
            let ci = match &block.emb {
                Some(e) if i > 0 => e.forward(&t, &labels, kind)?,
                _ => c0.shallow_clone(),
            };
            x = block.forward(&x, &ci);
        }
        let m = self.proj_out_1.forward(&c0.silu()).chunk(2, 1);
        let x = self.proj_out_2.forward(&modulate(&layer_norm(&x, 1e-6), &m[0], &m[1]));
        let co = c.out_channels();
        Ok(x.view([b, gh, gw, p, p, co]).permute([0, 5, 1, 3, 2, 4]).reshape([b, co, h, w]))
    }

    fn in_channels(&self) -> i64 {
        self.config.in_channels
    }

    fn out_channels(&self) -> i64 {
        self.config.out_channels()
    }

    fn num_classes(&self) -> Option<i64> {
        self.config.num_embeds_ada_norm
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

/// The parameter count of a DiT with `config`, from the layer shapes (no allocation).
pub fn parameter_count_of(config: &DitConfig) -> i64 {
    let d = config.hidden_size();
    let p = config.patch_size;
    let classes = config.num_embeds_ada_norm.unwrap_or(1);
    let linear = |i: i64, o: i64| i * o + o;
    let embedder = linear(256, d) + linear(d, d) + (classes + 1) * d;
    let embedders = if config.shared_conditioning.unwrap_or(true) { 1 } else { config.num_layers };
    let qkv_bias = if config.attention_bias { d } else { 0 };
    let qk_norm = if config.qk_norm { 4 * config.attention_head_dim } else { 0 };
    let block = linear(d, 6 * d)
        + 3 * (d * d + qkv_bias)
        + linear(d, d)
        + qk_norm
        + linear(d, 4 * d)
        + linear(4 * d, d);
    let patch = config.in_channels * p * p * d + d;
    let head = linear(d, 2 * d) + linear(d, p * p * config.out_channels());
    patch + embedders * embedder + config.num_layers * block + head
}
