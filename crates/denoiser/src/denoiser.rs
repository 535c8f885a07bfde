//! The [`Denoiser`] trait and its [`Conditioning`].

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{DenoiserError, Result};

/// What a denoiser is conditioned on besides the noisy input and the time.
#[derive(Debug, Default)]
pub struct Conditioning {
    /// Class labels `(B,)` i64 in `[0, num_classes]`, where `num_classes` is the null class
    /// (the unconditional prediction of classifier-free guidance). `None` for
    /// unconditional models or to ask for the null class everywhere.
    pub labels: Option<Tensor>,
    /// In training, uniform draws `(B,)` in `[0, 1)` that decide label dropout (a label is
    /// dropped where its draw is below the dropout probability). `None`: the forward pass
    /// draws them from libtorch's generator. The trainer passes its own so that a sample's
    /// dropout does not depend on how a batch is split over processes.
    pub dropout_draws: Option<Tensor>,
}

impl Conditioning {
    /// Conditioning on class labels `(B,)`.
    pub fn labels(labels: Tensor) -> Self {
        Self { labels: Some(labels), dropout_draws: None }
    }

    /// The same conditioning with label dropout decided by `draws` `(B,)` (see
    /// [`Conditioning::dropout_draws`]).
    pub fn with_dropout_draws(self, draws: Tensor) -> Self {
        Self { dropout_draws: Some(draws), ..self }
    }

    /// No conditioning (the null class for class-conditional models).
    pub fn none() -> Self {
        Self { labels: None, dropout_draws: None }
    }

    /// Class labels `(B,)` from outside (a user, a file), checked once where they enter:
    /// integers in `[0, num_classes]` (`num_classes` = the null class). One host read;
    /// forward passes do not check the range again.
    pub fn class_labels(labels: Tensor, num_classes: i64) -> Result<Self> {
        if labels.dim() != 1
            || !matches!(
                labels.kind(),
                Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
            )
        {
            return Err(DenoiserError::Input(format!(
                "labels must be (B,) integers, got {:?} {:?}",
                labels.size(),
                labels.kind()
            )));
        }
        if labels.numel() > 0 {
            let (lo, hi) = (i64::try_from(labels.f_min()?)?, i64::try_from(labels.f_max()?)?);
            if lo < 0 || hi > num_classes {
                return Err(DenoiserError::Input(format!(
                    "labels must be in [0, {num_classes}] ({num_classes} = null class), got [{lo}, {hi}]"
                )));
            }
        }
        Ok(Self::labels(labels))
    }

    /// The labels for a batch of `b` as i64 on `device`, with the null class `null` filled
    /// in when absent. Checks the shape only: no device synchronisation in the forward
    /// pass (the range is checked where labels enter, [`Self::class_labels`]; libtorch's
    /// embedding lookup still refuses an index out of range on the CPU).
    pub fn labels_or_null(&self, b: i64, null: i64, device: tch::Device) -> Result<Tensor> {
        match &self.labels {
            None => Ok(Tensor::f_full([b], null, (Kind::Int64, device))?),
            Some(l) => {
                if l.size() != [b] {
                    return Err(DenoiserError::Input(format!(
                        "labels must be ({b},), got {:?}",
                        l.size()
                    )));
                }
                Ok(l.f_to_kind(Kind::Int64)?.f_to_device(device)?)
            }
        }
    }
}

/// A network that maps a noisy latent and its time to a prediction of the same shape.
/// Object-safe: the trainer holds a `Box<dyn Denoiser>`; a user's model implements it too.
pub trait Denoiser {
    /// `x_t` `(B, C, H, W)`, `t` `(B,)` f32 model time, conditioning -> prediction
    /// `(B, C_out, H, W)`. `train` enables label dropout (and dropout layers).
    fn forward_t(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        train: bool,
    ) -> Result<Tensor>;

    /// [`Self::forward_t`] in evaluation mode.
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        self.forward_t(x_t, t, cond, false)
    }

    /// Input channels C.
    fn in_channels(&self) -> i64;
    /// Output channels.
    fn out_channels(&self) -> i64;
    /// Number of classes (the null class is this index), `None` if unconditional.
    fn num_classes(&self) -> Option<i64>;
    /// Its weights.
    fn var_store(&self) -> &VarStore;
}

/// Total number of elements of every variable of `vs`.
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}

/// Checks `x_t` `(B, C, H, W)` with H and W multiples of `multiple`, and `t` `(B,)`;
/// returns `(B, H, W)`.
pub(crate) fn check_inputs(
    x: &Tensor,
    t: &Tensor,
    channels: i64,
    multiple: i64,
) -> Result<(i64, i64, i64)> {
    let s = x.size();
    if s.len() != 4 || s[1] != channels {
        return Err(DenoiserError::Input(format!("x_t must be (B, {channels}, H, W), got {s:?}")));
    }
    if s[2] % multiple != 0 || s[3] % multiple != 0 {
        return Err(DenoiserError::Input(format!(
            "H and W must be multiples of {multiple}, got {}x{}",
            s[2], s[3]
        )));
    }
    if t.size() != [s[0]] {
        return Err(DenoiserError::Input(format!("t must be ({},), got {:?}", s[0], t.size())));
    }
    Ok((s[0], s[2], s[3]))
}

/// The dtype a model computes in: that of one of its weights (all share it; `set_kind`
/// converts them together). Reading one tensor avoids listing the whole store per forward.
pub(crate) fn weights_kind(weight: &Tensor) -> Kind {
    weight.kind()
}
