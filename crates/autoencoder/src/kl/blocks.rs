//! The building blocks of diffusers' `AutoencoderKL`, with the same module names (so state
//! dict keys match): `ResnetBlock2D`, the mid-block `Attention`, `UNetMidBlock2D`,
//! `DownEncoderBlock2D` and `UpDecoderBlock2D`.

use tch::Tensor;
use tch::nn::{self, Module};

/// GroupNorm with diffusers' VAE epsilon (1e-6).
pub(crate) fn group_norm(p: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(p, groups, channels, nn::GroupNormConfig { eps: 1e-6, ..Default::default() })
}

/// A 2-D convolution with square kernel `k`, stride and padding.
pub(crate) fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, k, nn::ConvConfig { stride, padding, ..Default::default() })
}

/// `norm1 -> silu -> conv1 -> norm2 -> silu -> conv2`, plus the input (through a 1x1
/// `conv_shortcut` when the channel count changes). `(B, c_in, H, W) -> (B, c_out, H, W)`.
#[derive(Debug)]
pub(crate) struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock2D {
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, groups: i64) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", groups, c_in),
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1, 1),
            norm2: group_norm(&p / "norm2", groups, c_out),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out)
                .then(|| conv(&p / "conv_shortcut", c_in, c_out, 1, 1, 0)),
        }
    }
}

impl Module for ResnetBlock2D {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(c) => c.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the H*W positions with a pre-GroupNorm and a residual:
/// `(B, C, H, W) -> (B, C, H, W)`.
#[derive(Debug)]
pub(crate) struct Attention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
}

impl Attention {
    pub(crate) fn new(p: nn::Path, channels: i64, groups: i64) -> Self {
        let lin = |name: &str| nn::linear(&p / name, channels, channels, Default::default());
        Self {
            group_norm: group_norm(&p / "group_norm", groups, channels),
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            to_out: nn::linear(&p / "to_out" / "0", channels, channels, Default::default()),
        }
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let tokens = self.group_norm.forward(x).view([b, c, h * w]).transpose(1, 2); // (B, HW, C)
        let heads = |l: &nn::Linear| l.forward(&tokens).unsqueeze(1); // (B, 1, HW, C)
        let attended = lpl_torch_ext::attention::scaled_dot_product(
            &heads(&self.to_q),
            &heads(&self.to_k),
            &heads(&self.to_v),
        )
        .squeeze_dim(1);
        let out = self.to_out.forward(&attended).transpose(1, 2).reshape([b, c, h, w]);
        out + x
    }
}

/// `resnets.0 -> attentions.0 -> resnets.1` at the lowest resolution.
#[derive(Debug)]
pub(crate) struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<Attention>,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    pub(crate) fn new(p: nn::Path, channels: i64, groups: i64, add_attention: bool) -> Self {
        let resnets = &p / "resnets";
        Self {
            resnet0: ResnetBlock2D::new(&resnets / "0", channels, channels, groups),
            attention: add_attention
                .then(|| Attention::new(&p / "attentions" / "0", channels, groups)),
            resnet1: ResnetBlock2D::new(&resnets / "1", channels, channels, groups),
        }
    }
}

impl MidBlock {
    /// The pieces [`Self::part`] runs one at a time: the resnets and the attention.
    pub(crate) fn parts(&self) -> usize {
        2 + usize::from(self.attention.is_some())
    }

    /// Piece `i` of the forward pass (chaining `0..parts()` gives `forward`).
    pub(crate) fn part(&self, i: usize, x: &Tensor) -> Option<Tensor> {
        match (i, &self.attention) {
            (0, _) => Some(self.resnet0.forward(x)),
            (1, Some(a)) => Some(a.forward(x)),
            (1, None) | (2, Some(_)) => Some(self.resnet1.forward(x)),
            _ => None,
        }
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.resnet0.forward(x);
        if let Some(a) = &self.attention {
            h = a.forward(&h);
        }
        self.resnet1.forward(&h)
    }
}

/// `resnets.0 .. resnets.{layers-1}`, the first taking `c_in` channels.
fn resnet_stack(
    p: &nn::Path,
    c_in: i64,
    c_out: i64,
    layers: i64,
    groups: i64,
) -> Vec<ResnetBlock2D> {
    (0..layers)
        .map(|i| {
            ResnetBlock2D::new(p / "resnets" / i, if i == 0 { c_in } else { c_out }, c_out, groups)
        })
        .collect()
}

fn run_resnets(resnets: &[ResnetBlock2D], x: &Tensor) -> Tensor {
    resnets.iter().fold(x.shallow_clone(), |h, r| r.forward(&h))
}

/// `resnets` then an optional stride-2 `downsamplers.0.conv` (zero padding right and bottom,
/// then a 3x3 convolution without padding).
#[derive(Debug)]
pub(crate) struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<nn::Conv2D>,
}

impl DownEncoderBlock2D {
    pub(crate) fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        layers: i64,
        groups: i64,
        downsample: bool,
    ) -> Self {
        let resnets = resnet_stack(&p, c_in, c_out, layers, groups);
        let downsample =
            downsample.then(|| conv(&p / "downsamplers" / "0" / "conv", c_out, c_out, 3, 2, 0));
        Self { resnets, downsample }
    }
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = run_resnets(&self.resnets, x);
        match &self.downsample {
            Some(c) => c.forward(&h.constant_pad_nd([0, 1, 0, 1])),
            None => h,
        }
    }
}

/// `resnets` then an optional `upsamplers.0.conv` after 2x nearest upsampling.
#[derive(Debug)]
pub(crate) struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsample: Option<nn::Conv2D>,
}

impl UpDecoderBlock2D {
    pub(crate) fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        layers: i64,
        groups: i64,
        upsample: bool,
    ) -> Self {
        let resnets = resnet_stack(&p, c_in, c_out, layers, groups);
        let upsample =
            upsample.then(|| conv(&p / "upsamplers" / "0" / "conv", c_out, c_out, 3, 1, 1));
        Self { resnets, upsample }
    }

    /// Whether this block doubles the resolution.
    pub(crate) fn upsamples(&self) -> bool {
        self.upsample.is_some()
    }

    /// The pieces [`Self::part`] runs one at a time: each resnet, then the upsampling.
    pub(crate) fn parts(&self) -> usize {
        self.resnets.len() + usize::from(self.upsample.is_some())
    }

    /// Piece `i` of the forward pass (chaining `0..parts()` gives `forward`).
    pub(crate) fn part(&self, i: usize, x: &Tensor) -> Option<Tensor> {
        match (self.resnets.get(i), &self.upsample) {
            (Some(r), _) => Some(r.forward(x)),
            (None, Some(c)) if i == self.resnets.len() => Some(c.forward(&upsample_nearest_2x(x))),
            _ => None,
        }
    }
}

/// Nearest-neighbour 2x upsampling of `(B, C, H, W)`.
pub(crate) fn upsample_nearest_2x(x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
    x.upsample_nearest2d([h * 2, w * 2], None, None)
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = run_resnets(&self.resnets, x);
        match &self.upsample {
            Some(c) => c.forward(&upsample_nearest_2x(&h)),
            None => h,
        }
    }
}
