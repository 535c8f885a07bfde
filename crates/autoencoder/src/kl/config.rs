//! `AutoencoderKlConfig`: the fields of a diffusers `vae/config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::{InputRange, LatentCodec};
use crate::error::{AutoencoderError, Result, invalid};

fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn one() -> i64 {
    1
}
fn thirty_two() -> i64 {
    32
}
fn yes() -> bool {
    true
}
fn block_out_channels() -> Vec<i64> {
    vec![64]
}
fn silu() -> String {
    "silu".to_string()
}
fn sd_scale() -> f64 {
    0.18215
}

/// A diffusers `AutoencoderKL` configuration. Unknown fields are errors; diffusers'
/// bookkeeping fields (`_class_name`, `_diffusers_version`, `_name_or_path`) and
/// inference-only ones (`sample_size`, `force_upcast`, `latents_mean`, `latents_std`) are
/// accepted and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderKlConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: i64,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: i64,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: i64,
    /// Channels of each resolution level; the image is downsampled `len - 1` times.
    #[serde(default = "block_out_channels")]
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "one")]
    pub layers_per_block: i64,
    /// GroupNorm groups; divides every entry of `block_out_channels`.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Activation; only `silu` exists in diffusers' VAEs.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Must all be `DownEncoderBlock2D` (one per level) when given.
    #[serde(default)]
    pub down_block_types: Option<Vec<String>>,
    /// Must all be `UpDecoderBlock2D` (one per level) when given.
    #[serde(default)]
    pub up_block_types: Option<Vec<String>>,
    /// 1x1 convolution after the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// 1x1 convolution before the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Self-attention in the mid blocks.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// The codec's scale.
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    /// The codec's shift (SD3, FLUX).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Training image size (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    /// diffusers' fp16 upcast hint (informational).
    #[serde(default)]
    pub force_upcast: Option<bool>,
    /// Per-channel latent means some pipelines use (informational).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent stds some pipelines use (informational).
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    /// diffusers bookkeeping.
    #[serde(default, rename = "_name_or_path", skip_serializing_if = "Option::is_none")]
    pub name_or_path: Option<String>,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

/// Names accepted by [`AutoencoderKlConfig::preset`].
pub const KL_PRESETS: [&str; 3] = ["sd", "tiny", "fmnist"];

impl AutoencoderKlConfig {
    /// Presets: `sd` (the SD 1.x / SDXL architecture, 83.7M parameters), `tiny` (tests),
    /// `fmnist` (the embedded default: 1 channel, 4 latent channels, 4x downsampling).
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self::default();
        Ok(match name {
            "sd" => {
                Self { block_out_channels: vec![128, 256, 512, 512], layers_per_block: 2, ..base }
            }
            "tiny" => Self { block_out_channels: vec![8, 16], norm_num_groups: 4, ..base },
            "fmnist" => Self {
                in_channels: 1,
                out_channels: 1,
                block_out_channels: vec![32, 32, 64],
                norm_num_groups: 16,
                scaling_factor: 1.0,
                ..base
            },
            _ => {
                return Err(invalid(
                    "preset",
                    format!("unknown `{name}`; known: {}", KL_PRESETS.join(", ")),
                ));
            }
        })
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AutoencoderError::Io { path: path.to_path_buf(), source })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| {
            AutoencoderError::ConfigFile { path: path.to_path_buf(), message: e.to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v < 1 {
                return Err(invalid(field, format!("must be >= 1, got {v}")));
            }
        }
        if self.block_out_channels.is_empty() {
            return Err(invalid("block_out_channels", "must have at least one entry"));
        }
        if self.norm_num_groups < 1 {
            return Err(invalid(
                "norm_num_groups",
                format!("must be >= 1, got {}", self.norm_num_groups),
            ));
        }
        if let Some(c) =
            self.block_out_channels.iter().find(|c| **c < 1 || **c % self.norm_num_groups != 0)
        {
            return Err(invalid(
                "block_out_channels",
                format!(
                    "{c} is not a positive multiple of norm_num_groups ({})",
                    self.norm_num_groups
                ),
            ));
        }
        if self.layers_per_block < 1 {
            return Err(invalid(
                "layers_per_block",
                format!("must be >= 1, got {}", self.layers_per_block),
            ));
        }
        if self.act_fn != "silu" {
            return Err(invalid(
                "act_fn",
                format!("only `silu` is supported, got `{}`", self.act_fn),
            ));
        }
        let levels = self.block_out_channels.len();
        for (field, types, expected) in [
            ("down_block_types", &self.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(types) = types {
                if types.len() != levels {
                    return Err(invalid(
                        field,
                        format!("has {} entries, block_out_channels {levels}", types.len()),
                    ));
                }
                if let Some(t) = types.iter().find(|t| *t != expected) {
                    return Err(invalid(
                        field,
                        format!("only `{expected}` is supported, got `{t}`"),
                    ));
                }
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(invalid(
                "scaling_factor",
                format!("must be finite and non-zero, got {}", self.scaling_factor),
            ));
        }
        Ok(())
    }

    /// Spatial downsampling factor: `2^(levels - 1)`.
    pub fn downsample_factor(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The codec diffusers pipelines use with this VAE: `[-1, 1]` input,
    /// `(z - shift_factor) * scaling_factor`.
    pub fn codec(&self) -> LatentCodec {
        LatentCodec::affine(
            InputRange::MinusOneToOne,
            self.scaling_factor,
            self.shift_factor.unwrap_or(0.0),
        )
    }
}
