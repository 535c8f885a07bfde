//! Time and label embeddings with diffusers' module names.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Sinusoidal embedding of t `(B,)` into `(B, dim)`: `exp(-ln(10000) * i / (dim/2 - shift))`
/// frequencies, `[sin, cos]`, swapped to `[cos, sin]` when `flip_sin_to_cos` (diffusers'
/// `get_timestep_embedding`).
pub fn timestep_embedding(t: &Tensor, dim: i64, flip_sin_to_cos: bool, shift: f64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()))
        / (half as f64 - shift);
    let args = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let mut emb =
        if flip_sin_to_cos { Tensor::cat(&[cos, sin], 1) } else { Tensor::cat(&[sin, cos], 1) };
    if dim % 2 == 1 {
        emb = emb.constant_pad_nd([0, 1]);
    }
    emb
}

/// `linear_1 -> silu -> linear_2` (diffusers' `TimestepEmbedding`): `(B, in) -> (B, out)`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    pub(crate) linear_1: nn::Linear,
    pub(crate) linear_2: nn::Linear,
}

impl TimestepEmbedding {
    /// `in_dim -> out_dim -> out_dim`.
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self {
            linear_1: nn::linear(&p / "linear_1", in_dim, out_dim, Default::default()),
            linear_2: nn::linear(&p / "linear_2", out_dim, out_dim, Default::default()),
        }
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

/// Replaces labels by the null class (`num_classes`) with probability `prob`, as
/// classifier-free guidance training does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelDropout {
    /// Number of real classes; the null class is this index.
    pub num_classes: i64,
    /// Probability of dropping each label.
    pub prob: f64,
}

impl LabelDropout {
    /// The labels of `cond` for a batch of `b` (null class where absent), dropped to the
    /// null class with probability `prob` when `train`.
    pub fn labels(
        &self,
        cond: &crate::Conditioning,
        b: i64,
        device: tch::Device,
        train: bool,
    ) -> crate::Result<Tensor> {
        let labels = cond.labels_or_null(b, self.num_classes, device)?;
        Ok(match (train, &cond.dropout_draws) {
            (false, _) => labels,
            (true, Some(draws)) => self.apply_draws(&labels, &draws.to_device(device)),
            (true, None) => self.apply(&labels),
        })
    }

    /// Labels `(B,)` with each independently replaced by the null class with probability
    /// `prob` (libtorch's generator).
    pub fn apply(&self, labels: &Tensor) -> Tensor {
        if self.prob <= 0.0 {
            return labels.shallow_clone();
        }
        let draws = Tensor::rand([labels.size()[0]], (Kind::Float, labels.device()));
        self.apply_draws(labels, &draws)
    }

    /// Labels `(B,)` replaced by the null class where `draws` `(B,)` (uniform in `[0, 1)`)
    /// are below `prob`.
    pub fn apply_draws(&self, labels: &Tensor, draws: &Tensor) -> Tensor {
        if self.prob <= 0.0 {
            return labels.shallow_clone();
        }
        let keep = draws.ge(self.prob);
        labels
            .where_self(&keep, &Tensor::full([1], self.num_classes, (Kind::Int64, labels.device())))
    }
}

/// Class labels to vectors, with one extra row for the null class (diffusers'
/// `LabelEmbedding`, key `embedding_table`): `(B,)` -> `(B, dim)`.
#[derive(Debug)]
pub struct LabelEmbedding {
    pub(crate) table: nn::Embedding,
}

impl LabelEmbedding {
    /// `num_classes + 1` rows of `dim` (the last is the null class).
    pub fn new(p: nn::Path, num_classes: i64, dim: i64) -> Self {
        Self {
            table: nn::embedding(&p / "embedding_table", num_classes + 1, dim, Default::default()),
        }
    }
}

impl LabelEmbedding {
    /// `(B,)` labels -> `(B, dim)`; an index outside the table is an error (on the CPU;
    /// CUDA kernels assert instead), not a panic.
    pub fn lookup(&self, labels: &Tensor) -> crate::Result<Tensor> {
        lookup(&self.table, labels)
    }
}

/// Rows `labels (B,)` of an embedding table, as an error rather than a panic when an index
/// is out of range.
pub(crate) fn lookup(table: &nn::Embedding, labels: &Tensor) -> crate::Result<Tensor> {
    Ok(Tensor::f_embedding(&table.ws, labels, -1, false, false)?)
}
