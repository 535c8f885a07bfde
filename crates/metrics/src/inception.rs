//! The FID Inception-v3 of pytorch-fid (`pt_inception-2015-12-05`, the TensorFlow FID graph
//! ported to PyTorch): 2048-d pool3 features. Its patched blocks (FIDInceptionA/C/E: average
//! pooling without the padded zeros, max pooling in the last E block) are reproduced exactly.
//!
//! Module names follow torchvision's `Inception3` (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_mean`, ...), so pytorch-fid's weight file loads as is; the
//! 1008-way classifier (`fc.*`) is not needed and ignored. The weights are not on a package
//! registry: users pass the file (`lpl eval --features inception --inception-weights F`),
//! and the metric is then named FID.

use std::path::Path;

use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::features::{FeatureExtractor, load_frozen};
use crate::frechet::StatsError;

/// Feature width (pool3).
pub const FEATURES: i64 = 2048;
/// Input resolution.
pub const RESOLUTION: i64 = 299;

/// Conv (no bias) + batch norm (eps 1e-3) + ReLU: torchvision's `BasicConv2d`.
#[derive(Debug)]
struct BasicConv {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv {
    /// `k` = (kh, kw), `pad` = (ph, pw).
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: (i64, i64),
        stride: i64,
        pad: (i64, i64),
    ) -> Self {
        let config = nn::ConvConfigND {
            stride: [stride, stride],
            padding: [pad.0, pad.1],
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(&p / "conv", c_in, c_out, [k.0, k.1], config);
        let bn = nn::batch_norm2d(
            &p / "bn",
            c_out,
            nn::BatchNormConfig { eps: 1e-3, ..Default::default() },
        );
        Self { conv, bn }
    }

    fn square(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, c_in, c_out, (k, k), stride, (pad, pad))
    }
}

impl Module for BasicConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x), false).relu()
    }
}

fn avg_pool_3x3(x: &Tensor) -> Tensor {
    // count_include_pad = false: the FID graph averages only the real pixels at the border
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

/// FIDInceptionA (Mixed_5b/c/d).
#[derive(Debug)]
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(p: nn::Path, c: i64, pool_features: i64) -> Self {
        Self {
            b1: BasicConv::square(&p / "branch1x1", c, 64, 1, 1, 0),
            b5: [
                BasicConv::square(&p / "branch5x5_1", c, 48, 1, 1, 0),
                BasicConv::square(&p / "branch5x5_2", 48, 64, 5, 1, 2),
            ],
            b3: [
                BasicConv::square(&p / "branch3x3dbl_1", c, 64, 1, 1, 0),
                BasicConv::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::square(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            ],
            pool: BasicConv::square(&p / "branch_pool", c, pool_features, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b5 = self.b5[1].forward(&self.b5[0].forward(x));
        let b3 = self.b3.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(&[self.b1.forward(x), b5, b3, self.pool.forward(&avg_pool_3x3(x))], 1)
    }
}

/// InceptionB (Mixed_6a): grid reduction 35 -> 17.
#[derive(Debug)]
struct BlockB {
    b3: BasicConv,
    dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            b3: BasicConv::square(&p / "branch3x3", c, 384, 3, 2, 0),
            dbl: [
                BasicConv::square(&p / "branch3x3dbl_1", c, 64, 1, 1, 0),
                BasicConv::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::square(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dbl = self.dbl.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let pool = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[self.b3.forward(x), dbl, pool], 1)
    }
}

/// FIDInceptionC (Mixed_6b..e): factorised 7x7 convolutions.
#[derive(Debug)]
struct BlockC {
    b1: BasicConv,
    b7: Vec<BasicConv>,
    dbl: Vec<BasicConv>,
    pool: BasicConv,
}

impl BlockC {
    fn new(p: nn::Path, c: i64, c7: i64) -> Self {
        let row = |name: &str, i: i64, o: i64| BasicConv::new(&p / name, i, o, (1, 7), 1, (0, 3));
        let col = |name: &str, i: i64, o: i64| BasicConv::new(&p / name, i, o, (7, 1), 1, (3, 0));
        Self {
            b1: BasicConv::square(&p / "branch1x1", c, 192, 1, 1, 0),
            b7: vec![
                BasicConv::square(&p / "branch7x7_1", c, c7, 1, 1, 0),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            dbl: vec![
                BasicConv::square(&p / "branch7x7dbl_1", c, c7, 1, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv::square(&p / "branch_pool", c, 192, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let chain =
            |convs: &[BasicConv]| convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(
            &[
                self.b1.forward(x),
                chain(&self.b7),
                chain(&self.dbl),
                self.pool.forward(&avg_pool_3x3(x)),
            ],
            1,
        )
    }
}

/// InceptionD (Mixed_7a): grid reduction 17 -> 8.
#[derive(Debug)]
struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

impl BlockD {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            b3: [
                BasicConv::square(&p / "branch3x3_1", c, 192, 1, 1, 0),
                BasicConv::square(&p / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            b7: [
                BasicConv::square(&p / "branch7x7x3_1", c, 192, 1, 1, 0),
                BasicConv::new(&p / "branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
                BasicConv::new(&p / "branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
                BasicConv::square(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.b3[1].forward(&self.b3[0].forward(x));
        let b7 = self.b7.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let pool = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b3, b7, pool], 1)
    }
}

/// FIDInceptionE_1 / _2 (Mixed_7b / 7c): the pool branch averages (7b) or max-pools (7c).
#[derive(Debug)]
struct BlockE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2: [BasicConv; 2],
    dbl_1: BasicConv,
    dbl_2: BasicConv,
    dbl_3: [BasicConv; 2],
    pool: BasicConv,
    max_pool: bool,
}

impl BlockE {
    fn new(p: nn::Path, c: i64, max_pool: bool) -> Self {
        let row = |name: &str, i: i64| BasicConv::new(&p / name, i, 384, (1, 3), 1, (0, 1));
        let col = |name: &str, i: i64| BasicConv::new(&p / name, i, 384, (3, 1), 1, (1, 0));
        Self {
            b1: BasicConv::square(&p / "branch1x1", c, 320, 1, 1, 0),
            b3_1: BasicConv::square(&p / "branch3x3_1", c, 384, 1, 1, 0),
            b3_2: [row("branch3x3_2a", 384), col("branch3x3_2b", 384)],
            dbl_1: BasicConv::square(&p / "branch3x3dbl_1", c, 448, 1, 1, 0),
            dbl_2: BasicConv::square(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            dbl_3: [row("branch3x3dbl_3a", 384), col("branch3x3dbl_3b", 384)],
            pool: BasicConv::square(&p / "branch_pool", c, 192, 1, 1, 0),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h3 = self.b3_1.forward(x);
        let b3 = Tensor::cat(&[self.b3_2[0].forward(&h3), self.b3_2[1].forward(&h3)], 1);
        let hd = self.dbl_2.forward(&self.dbl_1.forward(x));
        let dbl = Tensor::cat(&[self.dbl_3[0].forward(&hd), self.dbl_3[1].forward(&hd)], 1);
        let pooled = if self.max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_3x3(x)
        };
        Tensor::cat(&[self.b1.forward(x), b3, dbl, self.pool.forward(&pooled)], 1)
    }
}

/// pytorch-fid's `InceptionV3` with `use_fid_inception=True`, up to pool3.
#[derive(Debug)]
pub struct FidInceptionV3 {
    vs: nn::VarStore,
    stem: Vec<BasicConv>,
    stem2: Vec<BasicConv>,
    mixed_5: Vec<BlockA>,
    mixed_6a: BlockB,
    mixed_6: Vec<BlockC>,
    mixed_7a: BlockD,
    mixed_7: Vec<BlockE>,
}

impl FidInceptionV3 {
    /// The architecture with default-initialised weights.
    pub fn new(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        Self {
            stem: vec![
                BasicConv::square(&r / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
                BasicConv::square(&r / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                BasicConv::square(&r / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            ],
            stem2: vec![
                BasicConv::square(&r / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                BasicConv::square(&r / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
            ],
            mixed_5: vec![
                BlockA::new(&r / "Mixed_5b", 192, 32),
                BlockA::new(&r / "Mixed_5c", 256, 64),
                BlockA::new(&r / "Mixed_5d", 288, 64),
            ],
            mixed_6a: BlockB::new(&r / "Mixed_6a", 288),
            mixed_6: vec![
                BlockC::new(&r / "Mixed_6b", 768, 128),
                BlockC::new(&r / "Mixed_6c", 768, 160),
                BlockC::new(&r / "Mixed_6d", 768, 160),
                BlockC::new(&r / "Mixed_6e", 768, 192),
            ],
            mixed_7a: BlockD::new(&r / "Mixed_7a", 768),
            mixed_7: vec![
                BlockE::new(&r / "Mixed_7b", 1280, false),
                BlockE::new(&r / "Mixed_7c", 2048, true),
            ],
            vs,
        }
    }

    /// Loads pytorch-fid's weights (`pt_inception-2015-12-05-6726825d.pth`, or the same
    /// tensors as safetensors); the classifier, the auxiliary head and batch-norm step
    /// counters in the file are ignored, every other name and shape must match.
    pub fn from_file(path: &Path, device: Device) -> Result<Self, StatsError> {
        let mut model = Self::new(device);
        load_frozen(&mut model.vs, path, |k| k.starts_with("fc.") || k.starts_with("AuxLogits."))?;
        Ok(model)
    }

    /// Its weights.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// pool3 features `(B, 2048)` of network inputs `(B, 3, 299, 299)` in `[-1, 1]` (see
    /// [`preprocess`]).
    pub fn features(&self, x: &Tensor) -> Tensor {
        let pool = |h: Tensor| h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let mut h = pool(self.stem.iter().fold(x.to_kind(Kind::Float), |h, c| c.forward(&h)));
        h = pool(self.stem2.iter().fold(h, |h, c| c.forward(&h)));
        for b in &self.mixed_5 {
            h = b.forward(&h);
        }
        h = self.mixed_6a.forward(&h);
        for b in &self.mixed_6 {
            h = b.forward(&h);
        }
        h = self.mixed_7a.forward(&h);
        for b in &self.mixed_7 {
            h = b.forward(&h);
        }
        h.mean_dim(&[2i64, 3][..], false, Kind::Float)
    }
}

/// pytorch-fid's input handling: pixel images `(B, 1 or 3, H, W)` in `[0, 1]` (grey repeated
/// to RGB) resized bilinearly (no antialiasing, `align_corners = false`) to 299x299, then
/// `2x - 1`.
pub fn preprocess(images: &Tensor) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let x = if x.size()[1] == 1 { x.repeat([1, 3, 1, 1]) } else { x };
    x.upsample_bilinear2d([RESOLUTION, RESOLUTION], false, None, None) * 2.0 - 1.0
}

impl FeatureExtractor for FidInceptionV3 {
    fn metric_name(&self) -> &'static str {
        "FID"
    }

    fn dim(&self) -> i64 {
        FEATURES
    }

    fn features(&self, images: &Tensor) -> Tensor {
        FidInceptionV3::features(self, &preprocess(images))
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
