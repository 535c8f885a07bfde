//! [`LatentCodec`]: the one object that owns every latent constant.
//!
//! Three spaces: *pixel* images in `[0, 1]`; the autoencoder's *input* range (`[-1, 1]` for
//! the KL VAEs, `[0, 1]` for TAESD); *decoder* latents as the encoder emits and the decoder
//! consumes them; *model* latents, the normalised space the diffusion model works in.
//! `to_model(z) = (z - shift) * scale` and `to_decoder(m) = m / scale + shift`, or per-channel
//! `(z - mean_c) / std_c` and `m * std_c + mean_c`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{AutoencoderError, Result, invalid};

/// The value range an autoencoder's encoder expects and its decoder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRange {
    /// `[-1, 1]` (the KL VAEs of SD, SDXL, SD3, FLUX).
    MinusOneToOne,
    /// `[0, 1]` (TAESD family).
    ZeroToOne,
}

/// How decoder latents map to model latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatentNormalization {
    /// `(z - shift) * scale`: diffusers' `scaling_factor` and `shift_factor`.
    Affine {
        /// Multiplies after the shift.
        scale: f64,
        /// Subtracted first.
        shift: f64,
    },
    /// `(z_c - mean_c) / std_c` per channel (e.g. statistics of an encoded dataset).
    PerChannel {
        /// Per-channel means, length C.
        mean: Vec<f64>,
        /// Per-channel standard deviations, length C, all positive.
        std: Vec<f64>,
    },
}

/// Per-channel values as a `(1, C, 1, 1)` tensor with the dtype and device of `z`
/// `(B, C, H, W)`; an error when the channel counts differ.
fn channel_tensor(values: &[f64], z: &Tensor) -> Result<Tensor> {
    if z.dim() != 4 || z.size()[1] != values.len() as i64 {
        return Err(AutoencoderError::Input(format!(
            "codec has {} channels, latent has shape {:?}",
            values.len(),
            z.size()
        )));
    }
    Ok(Tensor::from_slice(values)
        .f_to_kind(z.kind())?
        .f_to_device(z.device())?
        .f_view([1, -1, 1, 1])?)
}

/// Names accepted by [`LatentCodec::preset`].
pub const CODEC_PRESETS: [&str; 6] = ["sd", "sdxl", "sd3", "flux1", "taesd", "identity"];

/// Input range plus latent normalisation, saved with every latent cache and checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentCodec {
    /// What the encoder expects.
    pub input_range: InputRange,
    /// Decoder latents to model latents.
    pub normalization: LatentNormalization,
}

impl LatentCodec {
    /// An affine codec.
    pub fn affine(input_range: InputRange, scale: f64, shift: f64) -> Self {
        Self { input_range, normalization: LatentNormalization::Affine { scale, shift } }
    }

    /// Presets: `sd` (SD 1.x/2.x, scale 0.18215), `sdxl` (0.13025), `sd3` (1.5305, shift
    /// 0.0609), `flux1` (0.3611, shift 0.1159), all `[-1, 1]`; `taesd` (TAESD family:
    /// already scaled, `[0, 1]`); `identity` (`[-1, 1]`, scale 1).
    pub fn preset(name: &str) -> Result<Self> {
        use InputRange::*;
        Ok(match name {
            "sd" => Self::affine(MinusOneToOne, 0.18215, 0.0),
            "sdxl" => Self::affine(MinusOneToOne, 0.13025, 0.0),
            "sd3" => Self::affine(MinusOneToOne, 1.5305, 0.0609),
            "flux1" => Self::affine(MinusOneToOne, 0.3611, 0.1159),
            "taesd" => Self::affine(ZeroToOne, 1.0, 0.0),
            "identity" => Self::affine(MinusOneToOne, 1.0, 0.0),
            _ => {
                return Err(invalid(
                    "codec",
                    format!("unknown preset `{name}`; known: {}", CODEC_PRESETS.join(", ")),
                ));
            }
        })
    }

    /// A per-channel codec from decoder latents of a dataset, `(N, C, H, W)`: mean and
    /// (population) std of each channel over N, H and W.
    pub fn from_latents(input_range: InputRange, latents: &Tensor) -> Result<Self> {
        if latents.dim() != 4 {
            return Err(AutoencoderError::Input(format!(
                "latent statistics need (N, C, H, W), got {:?}",
                latents.size()
            )));
        }
        let z = latents.f_to_kind(Kind::Double)?;
        let mean = z.f_mean_dim(&[0i64, 2, 3][..], false, Kind::Double)?;
        let std = z.f_std_dim(&[0i64, 2, 3][..], false, false)?;
        let codec = Self {
            input_range,
            normalization: LatentNormalization::PerChannel {
                mean: Vec::<f64>::try_from(mean)?,
                std: Vec::<f64>::try_from(std)?,
            },
        };
        codec.validate()?;
        Ok(codec)
    }

    /// Checks the constants; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match &self.normalization {
            LatentNormalization::Affine { scale, shift } => {
                if !(scale.is_finite() && *scale != 0.0) {
                    return Err(invalid(
                        "scale",
                        format!("must be finite and non-zero, got {scale}"),
                    ));
                }
                if !shift.is_finite() {
                    return Err(invalid("shift", format!("must be finite, got {shift}")));
                }
            }
            LatentNormalization::PerChannel { mean, std } => {
                if mean.len() != std.len() || mean.is_empty() {
                    return Err(invalid(
                        "std",
                        format!("mean has {} channels, std {}", mean.len(), std.len()),
                    ));
                }
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(invalid("std", format!("every std must be positive, found {s}")));
                }
            }
        }
        Ok(())
    }

    /// Decoder latents `(B, C, H, W)` to model latents.
    pub fn to_model(&self, z: &Tensor) -> Result<Tensor> {
        match &self.normalization {
            LatentNormalization::Affine { scale, shift } => Ok((z - *shift) * *scale),
            LatentNormalization::PerChannel { mean, std } => {
                Ok((z - channel_tensor(mean, z)?) / channel_tensor(std, z)?)
            }
        }
    }

    /// Model latents `(B, C, H, W)` to decoder latents (exact inverse of [`Self::to_model`]).
    pub fn to_decoder(&self, m: &Tensor) -> Result<Tensor> {
        match &self.normalization {
            LatentNormalization::Affine { scale, shift } => Ok(m / *scale + *shift),
            LatentNormalization::PerChannel { mean, std } => {
                Ok(m * channel_tensor(std, m)? + channel_tensor(mean, m)?)
            }
        }
    }

    /// Pixel images in `[0, 1]` to the encoder's input range.
    pub fn pixels_to_input(&self, images: &Tensor) -> Tensor {
        match self.input_range {
            InputRange::MinusOneToOne => images * 2.0 - 1.0,
            InputRange::ZeroToOne => images.shallow_clone(),
        }
    }

    /// Decoder outputs to pixel images, clamped to `[0, 1]`.
    pub fn output_to_pixels(&self, images: &Tensor) -> Tensor {
        match self.input_range {
            InputRange::MinusOneToOne => ((images + 1.0) * 0.5).clamp(0.0, 1.0),
            InputRange::ZeroToOne => images.clamp(0.0, 1.0),
        }
    }

    /// The codec as one JSON line (for safetensors metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses [`Self::to_json`]'s output and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let codec: Self = serde_json::from_str(text)
            .map_err(|e| invalid("codec", format!("cannot parse codec JSON: {e}")))?;
        codec.validate()?;
        Ok(codec)
    }
}
