//! Frechet distance between Gaussians fitted to feature sets (Heusel et al. 2017), in f64.
//!
//! `d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`, with the trace of the matrix
//! square root computed stably as `sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))`: a symmetric positive
//! semi-definite eigenproblem (negative round-off eigenvalues clamped to 0), which also holds
//! for rank-deficient covariances where a general `sqrtm(S1 S2)` struggles.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

/// Errors of the metrics crate's statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Shapes that do not fit together.
    #[error("bad input: {0}")]
    Input(String),
    /// Reading or writing a statistics file failed.
    #[error(transparent)]
    File(#[from] lpl_tensor_io::TensorIoError),
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// Mean `(D,)` and unbiased covariance `(D, D)` of a feature set, f64 on the CPU.
#[derive(Debug)]
pub struct GaussianStats {
    /// `(D,)`.
    pub mu: Tensor,
    /// `(D, D)`.
    pub sigma: Tensor,
    /// Number of feature vectors.
    pub count: i64,
}

/// Streams feature batches `(B, D)` into sums, then gives [`GaussianStats`].
#[derive(Debug)]
pub struct StatsAccumulator {
    sum: Tensor,
    outer: Tensor,
    count: i64,
}

impl StatsAccumulator {
    /// Sums for `dim`-dimensional features.
    pub fn new(dim: i64) -> Self {
        let opts = (Kind::Double, Device::Cpu);
        Self { sum: Tensor::zeros([dim], opts), outer: Tensor::zeros([dim, dim], opts), count: 0 }
    }

    /// Adds a batch `(B, D)` (any float dtype or device).
    pub fn add(&mut self, features: &Tensor) -> Result<(), StatsError> {
        let d = self.sum.size()[0];
        if features.dim() != 2 || features.size()[1] != d {
            return Err(StatsError::Input(format!(
                "features must be (B, {d}), got {:?}",
                features.size()
            )));
        }
        let f = features.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        self.sum += f.f_sum_dim_intlist(0, false, Kind::Double)?;
        self.outer += f.f_transpose(0, 1)?.f_matmul(&f)?;
        self.count += f.size()[0];
        Ok(())
    }

    /// Mean and unbiased covariance (`np.cov(features, rowvar=False)`); needs >= 2 vectors.
    pub fn finish(&self) -> Result<GaussianStats, StatsError> {
        if self.count < 2 {
            return Err(StatsError::Input(format!(
                "{} feature vectors: need at least 2",
                self.count
            )));
        }
        let n = self.count as f64;
        let mu = &self.sum / n;
        let sigma = (&self.outer - mu.outer(&mu) * n) / (n - 1.0);
        Ok(GaussianStats { mu, sigma, count: self.count })
    }
}

fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "npz")
}

impl GaussianStats {
    /// Writes `mu`, `sigma` and the count atomically: as safetensors, or, for a `.npz` path,
    /// as ADM's and pytorch-fid's statistics files hold them (`mu` `(D,)`, `sigma` `(D, D)`,
    /// f64; no count).
    pub fn save(&self, path: &Path) -> Result<(), StatsError> {
        if is_npz(path) {
            let arrays = [("mu", &self.mu), ("sigma", &self.sigma)];
            return Ok(lpl_tensor_io::npz::write_npz(path, &arrays)?);
        }
        let meta = BTreeMap::from([("lpl.count".to_string(), self.count.to_string())]);
        let tensors = vec![
            ("mu".to_string(), self.mu.shallow_clone()),
            ("sigma".to_string(), self.sigma.shallow_clone()),
        ];
        Ok(lpl_tensor_io::save(&tensors, &meta, path)?)
    }

    /// Reads statistics written by [`Self::save`], or any safetensors or `.npz` file with
    /// `mu` (D,), `sigma` (D, D) (ADM's reference batches, pytorch-fid's `--save-stats`).
    pub fn load(path: &Path) -> Result<Self, StatsError> {
        let t = if is_npz(path) {
            lpl_tensor_io::npz::read_npz(path)?
        } else {
            lpl_tensor_io::read_tensors(path)?
        };
        let mut stats = Self::from_tensors(&t, path)?;
        if !is_npz(path) {
            stats.count = lpl_tensor_io::read_metadata(path)?
                .get("lpl.count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        Ok(stats)
    }

    /// The statistics in tensors read from `path` (`mu` (D,), `sigma` (D, D); count 0).
    pub fn from_tensors(t: &BTreeMap<String, Tensor>, path: &Path) -> Result<Self, StatsError> {
        let get = |k: &str| {
            t.get(k)
                .map(|x| x.to_kind(Kind::Double))
                .ok_or_else(|| StatsError::Input(format!("{}: no tensor `{k}`", path.display())))
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = mu.size().first().copied().unwrap_or(0);
        if mu.dim() != 1 || sigma.size() != [d, d] {
            return Err(StatsError::Input(format!(
                "{}: mu {:?} and sigma {:?} do not fit",
                path.display(),
                mu.size(),
                sigma.size()
            )));
        }
        Ok(Self { mu, sigma, count: 0 })
    }
}

/// Symmetric PSD square root by eigendecomposition (eigenvalues clamped at 0).
fn sqrt_psd(s: &Tensor) -> Result<Tensor, StatsError> {
    let sym = (s + s.f_transpose(0, 1)?) * 0.5;
    let (vals, vecs) = sym.f_linalg_eigh("L")?;
    let root = vals.f_clamp_min(0.0)?.f_sqrt()?;
    Ok(vecs.f_mul(&root.f_unsqueeze(0)?)?.f_matmul(&vecs.f_transpose(0, 1)?)?)
}

/// The Frechet distance between two Gaussians (f64).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64, StatsError> {
    let d = a.mu.size()[0];
    if b.mu.size() != [d] || a.sigma.size() != [d, d] || b.sigma.size() != [d, d] {
        return Err(StatsError::Input(format!(
            "dimensions differ: {:?} vs {:?}",
            a.mu.size(),
            b.mu.size()
        )));
    }
    let diff = &a.mu - &b.mu;
    let root_a = sqrt_psd(&a.sigma)?;
    let inner = root_a.f_matmul(&b.sigma)?.f_matmul(&root_a)?;
    let inner = (&inner + inner.f_transpose(0, 1)?) * 0.5;
    let eig = inner.f_linalg_eigvalsh("L")?;
    // Eigenvalues below d * eps * max are rounding noise of a PSD matrix (rank-deficient
    // covariances: fewer samples than dimensions); their square roots (~sqrt(noise)) would
    // add up to a visible bias, so they count as zero, as a pseudo-inverse's cut-off does.
    let max = f64::try_from(eig.f_max()?)?.max(0.0);
    let cutoff = max * d as f64 * f64::EPSILON;
    let kept = eig.f_where_scalarother(&eig.f_gt(cutoff)?, 0.0)?;
    let tr_covmean = f64::try_from(kept.f_sqrt()?.f_sum(Kind::Double)?)?;
    let mean_term = f64::try_from(diff.f_dot(&diff)?)?;
    let traces = f64::try_from(a.sigma.f_trace()? + b.sigma.f_trace()?)?;
    Ok(mean_term + traces - 2.0 * tr_covmean)
}
