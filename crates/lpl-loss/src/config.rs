//! [`LplConfig`]: every option of the loss (shared/LPL.md), with the `paper` and
//! `diffusers` presets.

use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid};

/// How feature maps are normalised before they are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Both branches standardised with the prediction's per-channel mean and std over H*W
    /// (the paper); gradients flow through the statistics.
    PredStats,
    /// Both branches divided by the target's L2 norm across channels at each pixel, + 1e-6
    /// (the diffusers port's `shared`).
    TargetChannelL2,
    /// Each branch divided by its own L2 norm across channels, + 1e-10 (the port's `default`).
    ChannelL2,
    /// Each branch standardised with its own statistics (ablation).
    SeparateStats,
    /// No normalisation.
    None,
}

/// Which features the outlier mask is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// The target (clean latent) features.
    Target,
    /// The prediction's features.
    Prediction,
}

/// Per-layer weights `omega_l`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerWeights {
    /// `1 / upscale(l)` relative to the latent grid (1, 1/2, 1/4, 1/8, 1/8 for SD).
    InverseUpscale,
    /// `2^-min(l, 3)` by layer index (the diffusers port's `pow_law`).
    PowerLaw,
    /// All 1.
    Uniform,
    /// One weight per layer, mid block first.
    Explicit(Vec<f64>),
}

/// Per-element distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Squared difference.
    L2,
    /// Absolute difference.
    L1,
}

/// How the distance map is reduced over space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpatialReduce {
    /// Sum over kept pixels / max(count, 1).
    MaskedMean,
    /// Sum over kept pixels.
    Sum,
}

/// Which samples go through the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LplGate {
    /// Keep samples with `snr(t) >= tau` (flow: `((1 - t) / t)^2`).
    Snr {
        /// The threshold (3.0 is about t < 200 on SD's schedule).
        tau: f64,
    },
    /// Keep samples whose model time is below a threshold (the port's `t < 200`).
    Timestep {
        /// Exclusive upper bound on the model time.
        max: f64,
    },
    /// Keep every sample.
    All,
}

/// How the per-sample losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchReduce {
    /// Mean over the kept samples (the reference).
    Kept,
    /// Sum over kept samples / whole batch size.
    Batch,
}

fn default_quantile() -> f64 {
    0.02
}
fn default_weight() -> f64 {
    1.0
}

/// The latent perceptual loss, configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LplConfig {
    /// Number of up blocks whose outputs are compared after the mid block (`None`: all).
    #[serde(default)]
    pub depth: Option<usize>,
    /// Feature normalisation.
    pub norm: Normalization,
    /// Outlier masking on or off.
    pub mask: bool,
    /// Features the mask is computed on.
    pub mask_source: MaskSource,
    /// Lower quantile q of the mask (upper: 1 - q).
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Erosion kernel at full resolution (5 in the paper), divided by the layer's down factor.
    #[serde(default = "five")]
    pub erode_kernel: i64,
    /// Dilation kernel at full resolution (3 in the paper), divided by the down factor.
    #[serde(default = "three")]
    pub dilate_kernel: i64,
    /// Per-layer weights.
    pub layer_weights: LayerWeights,
    /// Spatial reduction.
    pub spatial_reduce: SpatialReduce,
    /// Element distance.
    pub distance: Distance,
    /// Sample gate.
    pub gate: LplGate,
    /// Optimiser step from which the loss is added (post-training phase).
    #[serde(default)]
    pub start_step: usize,
    /// Weight w_lpl of the loss in the total.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Batch reduction.
    pub batch_reduce: BatchReduce,
    /// Min-SNR-gamma weighting of each sample's loss (`None`: off).
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// Apply the autoencoder's `post_quant_conv` before the decoder (the port skips it).
    pub post_quant_conv: bool,
    /// Decode at most this many kept samples at a time when the trainer computes the LPL's
    /// gradient ([`crate::LatentPerceptualLoss::value_and_grad`]): peak memory is one
    /// chunk's decoder graph instead of the whole batch's, the gradient is the same (the
    /// loss decomposes over samples). `None`: the whole batch at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<usize>,
    /// With `chunk`: keep only the decoder's stage boundaries of a chunk and recompute each
    /// stage's graph during the backward sweep (activation checkpointing): peak memory is
    /// one stage's graph, for about one more decoder forward per kept sample. The gradient is
    /// the same. Autoencoders that do not expose their stages keep the whole graph.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute: bool,
}

fn five() -> i64 {
    5
}
fn three() -> i64 {
    3
}

/// Deserializes `[loss.lpl]` as written: `preset = "paper"` (or `"diffusers"`) gives every
/// field, the fields written beside it override the preset's; without `preset` every
/// required field must be given. Unknown fields are errors naming them. For
/// `#[serde(deserialize_with = "...")]` on an `Option<LplConfig>` field.
pub fn optional_with_preset<'de, D>(d: D) -> std::result::Result<Option<LplConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    let value = Option::<serde_json::Value>::deserialize(d)?;
    let Some(mut value) = value else { return Ok(None) };
    if let Some(table) = value.as_object_mut()
        && let Some(name) = table.remove("preset")
    {
        let name = name.as_str().ok_or_else(|| D::Error::custom("`preset` must be a string"))?;
        let preset = LplConfig::preset(name).map_err(D::Error::custom)?;
        let mut merged = serde_json::to_value(preset).map_err(D::Error::custom)?;
        if let Some(base) = merged.as_object_mut() {
            base.extend(std::mem::take(table));
        }
        value = merged;
    }
    serde_json::from_value(value).map(Some).map_err(D::Error::custom)
}

/// [`optional_with_preset`] for a required `LplConfig` field.
pub fn with_preset<'de, D>(d: D) -> std::result::Result<LplConfig, D::Error>
where
    D: serde::Deserializer<'de>,
{
    optional_with_preset(d)?.ok_or_else(|| serde::de::Error::custom("the LPL table is missing"))
}

/// Names accepted by [`LplConfig::preset`].
pub const LPL_PRESETS: [&str; 2] = ["paper", "diffusers"];

impl LplConfig {
    /// `paper`: prediction-statistics normalisation, mask on the target, inverse-upscale
    /// weights, masked mean, SNR gate tau = 3, all up blocks, post_quant_conv applied.
    /// `diffusers`: the port's `shared` normalisation, mask on the target, `2^-min(l,3)`
    /// weights, masked mean, gate `t < 200`, post_quant_conv skipped.
    pub fn preset(name: &str) -> Result<Self> {
        let paper = Self {
            depth: None,
            norm: Normalization::PredStats,
            mask: true,
            mask_source: MaskSource::Target,
            quantile: 0.02,
            erode_kernel: 5,
            dilate_kernel: 3,
            layer_weights: LayerWeights::InverseUpscale,
            spatial_reduce: SpatialReduce::MaskedMean,
            distance: Distance::L2,
            gate: LplGate::Snr { tau: 3.0 },
            start_step: 0,
            weight: 1.0,
            batch_reduce: BatchReduce::Kept,
            min_snr_gamma: None,
            post_quant_conv: true,
            chunk: None,
            recompute: false,
        };
        Ok(match name {
            "paper" => paper,
            "diffusers" => Self {
                norm: Normalization::TargetChannelL2,
                layer_weights: LayerWeights::PowerLaw,
                gate: LplGate::Timestep { max: 200.0 },
                post_quant_conv: false,
                ..paper
            },
            _ => {
                return Err(invalid(
                    "preset",
                    format!("unknown `{name}`; known: {}", LPL_PRESETS.join(", ")),
                ));
            }
        })
    }

    /// Checks every field and combination; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.quantile > 0.0 && self.quantile < 0.5) {
            return Err(invalid("quantile", format!("must be in (0, 0.5), got {}", self.quantile)));
        }
        if self.erode_kernel < 1 || self.dilate_kernel < 1 {
            return Err(invalid("erode_kernel", "kernels must be >= 1"));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(invalid("weight", format!("must be >= 0, got {}", self.weight)));
        }
        match self.gate {
            LplGate::Snr { tau } if !(tau.is_finite() && tau >= 0.0) => {
                return Err(invalid("gate", format!("tau must be >= 0, got {tau}")));
            }
            LplGate::Timestep { max } if !max.is_finite() => {
                return Err(invalid("gate", format!("max must be finite, got {max}")));
            }
            _ => {}
        }
        if let LayerWeights::Explicit(w) = &self.layer_weights {
            if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(invalid("layer_weights", "explicit weights must be finite and >= 0"));
            }
            if let Some(d) = self.depth
                && w.len() != d + 1
            {
                return Err(invalid(
                    "layer_weights",
                    format!("{} weights for depth {d} ({} layers)", w.len(), d + 1),
                ));
            }
        }
        if let Some(g) = self.min_snr_gamma
            && !(g.is_finite() && g > 0.0)
        {
            return Err(invalid("min_snr_gamma", format!("must be positive, got {g}")));
        }
        if self.chunk == Some(0) {
            return Err(invalid("chunk", "must be >= 1 (or left out: the whole batch)"));
        }
        if self.recompute && self.chunk.is_none() {
            return Err(invalid("recompute", "needs `chunk` (it recomputes one chunk's decoder)"));
        }
        if !self.mask && self.mask_source == MaskSource::Prediction {
            return Err(invalid("mask_source", "`prediction` needs `mask = true`"));
        }
        Ok(())
    }
}
