//! The ablation's config: what is compared ([`AblationConfig`]) and the LPL arms
//! ([`LplVariant`]).

use std::path::{Path, PathBuf};

use lpl_loss::{LplConfig, LplGate, Normalization};
use lpl_schedulers::Parameterization;
use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid, parse_toml, read_text};

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

fn default_variants() -> Vec<LplVariant> {
    vec![LplVariant { name: "lpl".into(), ..LplVariant::default() }]
}

fn default_report_name() -> String {
    "report".into()
}

fn default_eval_seed() -> u64 {
    12_345
}

/// One LPL arm: the `[lpl]` table with some fields replaced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LplVariant {
    /// The arm's name (its run directory and its row in the report).
    pub name: String,
    /// Decoder up blocks used (0: the mid block only).
    #[serde(default)]
    pub depth: Option<usize>,
    /// SNR gate threshold (replaces the gate with `snr(t) >= tau`).
    #[serde(default)]
    pub tau: Option<f64>,
    /// Feature normalisation.
    #[serde(default)]
    pub norm: Option<Normalization>,
    /// Loss weight: a number, or `{ share = s }`: calibrated at the fork so that the LPL
    /// term is the fraction `s` of the loss on a few training batches of the pre-trained
    /// model (the paper's guidance: about 0.2), written to the run's config and the report.
    #[serde(default)]
    pub weight: Option<LplWeight>,
    /// Outlier masking on or off.
    #[serde(default)]
    pub mask: Option<bool>,
}

/// A loss weight as written in an ablation config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LplWeight {
    /// This weight.
    Fixed(f64),
    /// Calibrated so that the term is this fraction of the loss at the fork.
    Share {
        /// The fraction, in (0, 1).
        share: f64,
    },
}

/// The continuation's length as a fraction of pre-training (`continuation = { fraction =
/// 0.25 }`; the paper continues for 1/5 to 1/3 of it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinuationLength {
    /// Continuation steps / pre-training steps.
    pub fraction: f64,
}

impl LplVariant {
    /// The share to calibrate the weight to, if the weight is given as one.
    pub fn share(&self) -> Option<f64> {
        match self.weight {
            Some(LplWeight::Share { share }) => Some(share),
            _ => None,
        }
    }

    /// Whether this variant measures something other than the base LPL: its depth, gate,
    /// normalisation or mask is replaced (a weight scales the term, it does not change
    /// what is measured). Its positive control is then taken with its own LPL as well.
    pub fn changes_the_measure(&self) -> bool {
        self.depth.is_some() || self.tau.is_some() || self.norm.is_some() || self.mask.is_some()
    }

    /// `base` with this variant's fields (a `share` weight leaves the base weight: the
    /// calibrated one is set at the fork).
    pub fn apply(&self, base: &LplConfig) -> LplConfig {
        let mut c = base.clone();
        if let Some(d) = self.depth {
            c.depth = Some(d);
        }
        if let Some(tau) = self.tau {
            c.gate = LplGate::Snr { tau };
        }
        if let Some(n) = self.norm {
            c.norm = n;
        }
        if let Some(LplWeight::Fixed(w)) = self.weight {
            c.weight = w;
        }
        if let Some(m) = self.mask {
            c.mask = m;
        }
        c
    }
}

/// What an ablation runs. Paths are relative to the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// Where everything goes.
    pub output_dir: PathBuf,
    /// The autoencoder training config (its `output_dir` is replaced by `<output_dir>/ae`);
    /// or give `autoencoder` (a pretrained one) and `data` instead.
    #[serde(default)]
    pub autoencoder_config: Option<PathBuf>,
    /// A pretrained autoencoder (a diffusers VAE folder, a TAESD pair folder or an lpl
    /// checkpoint): nothing is trained, `data` is encoded with it.
    #[serde(default)]
    pub autoencoder: Option<PathBuf>,
    /// The dataset, with a pretrained `autoencoder` (otherwise the autoencoder config's).
    #[serde(default)]
    pub data: Option<lpl_data::DatasetConfig>,
    /// A latent cache built beforehand (`lpl cache --config ...`) with that autoencoder, used
    /// instead of encoding `data` here (paper scale).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Base name of the report files (`<name>.md`, `<name>.html`; results as
    /// `results[-suffix].json`), so sweeps sharing an output directory keep their own.
    #[serde(default = "default_report_name")]
    pub report_name: String,
    /// The base diffusion run config (paths, steps, seed and loss are set per run).
    pub run_config: PathBuf,
    /// Parameterisations compared (`eps`, `v`, `flow`).
    pub parameterizations: Vec<Parameterization>,
    /// Seeds of the continuations.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Autoencoder training steps (overrides its config).
    pub autoencoder_steps: usize,
    /// MSE pre-training steps per parameterisation.
    pub pretrain_steps: usize,
    /// Steps of each continuation (or give `continuation`).
    #[serde(default)]
    pub continuation_steps: usize,
    /// The continuation's length as a fraction of `pretrain_steps` (instead of
    /// `continuation_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<ContinuationLength>,
    /// The LPL arm's loss (`preset = "paper"` with overrides, or every field).
    #[serde(deserialize_with = "lpl_loss::config::with_preset")]
    pub lpl: LplConfig,
    /// Generated (and real) images per FD-EffNet.
    pub eval_count: usize,
    /// Sampler steps for evaluation.
    pub eval_steps: usize,
    /// Classifier-free guidance scale for evaluation.
    pub eval_guidance: f64,
    /// Seed of the evaluation noise (the same for every arm).
    #[serde(default = "default_eval_seed")]
    pub eval_seed: u64,
    /// The LPL arms compared with MSE (default: one, `lpl`, the `[lpl]` table as is).
    #[serde(default = "default_variants")]
    pub variants: Vec<LplVariant>,
    /// Train the autoencoder and build the cache on the first this many training images
    /// (default: all).
    #[serde(default)]
    pub train_images: Option<usize>,
    /// Add the pixel-space control arm `pixel`: MSE + the MSE of the decoded images
    /// (`lpl_loss::pixel_loss`), with the first LPL variant's gate and weight (or share
    /// calibration), so the report can say whether decoder features matter beyond decoding.
    #[serde(default)]
    pub pixel_arm: bool,
}

impl AblationConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut c: Self = parse_toml(&read_text(path)?, path)?;
        match (c.continuation, c.continuation_steps) {
            (Some(f), 0) if f.fraction > 0.0 && f.fraction.is_finite() => {
                c.continuation_steps =
                    ((c.pretrain_steps as f64 * f.fraction).round() as usize).max(1);
            }
            (Some(f), 0) => {
                return Err(invalid(
                    "continuation",
                    format!("fraction must be positive, got {}", f.fraction),
                ));
            }
            (Some(_), _) => {
                return Err(invalid(
                    "continuation",
                    "give `continuation_steps` or `continuation = { fraction = ... }`, not both",
                ));
            }
            (None, _) => {}
        }
        for v in &c.variants {
            if let Some(share) = v.share()
                && !(share > 0.0 && share < 1.0)
            {
                return Err(invalid(
                    "variants",
                    format!("`{}`: weight share must be in (0, 1), got {share}", v.name),
                ));
            }
        }
        if c.parameterizations.is_empty() || c.seeds.is_empty() {
            return Err(invalid(
                "parameterizations",
                "need at least one parameterisation and one seed",
            ));
        }
        if c.pretrain_steps == 0
            || c.continuation_steps == 0
            || c.autoencoder_steps == 0
            || c.eval_count < 2
        {
            return Err(invalid("pretrain_steps", "step counts must be >= 1 and eval_count >= 2"));
        }
        c.lpl.validate().map_err(|e| invalid("lpl", e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for v in &c.variants {
            if v.name.is_empty()
                || ["mse", "pretrain", "pixel", "reconstruction"].contains(&v.name.as_str())
                || !v.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                || !names.insert(v.name.clone())
            {
                return Err(invalid(
                    "variants",
                    format!(
                        "variant name `{}`: must be unique, [A-Za-z0-9_-], not mse, pretrain, pixel or reconstruction",
                        v.name
                    ),
                ));
            }
            v.apply(&c.lpl)
                .validate()
                .map_err(|e| invalid("variants", format!("`{}`: {e}", v.name)))?;
        }
        match (&c.autoencoder_config, &c.autoencoder, &c.data) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(invalid(
                    "autoencoder_config",
                    "give either `autoencoder_config` (an autoencoder trained here) or `autoencoder` \
                     (pretrained) together with `[data]`",
                ));
            }
        }
        if let Some(d) = &c.data {
            d.validate()?;
        }
        if c.report_name.is_empty() || c.report_name.contains('/') {
            return Err(invalid("report_name", "a plain file name"));
        }
        if c.variants.is_empty() {
            return Err(invalid("variants", "need at least one LPL variant"));
        }
        Ok(c)
    }

    /// Only these parameterisations (`--only eps`: reproduces one row group of the report).
    pub fn only(mut self, keep: &[Parameterization]) -> Result<Self> {
        if let Some(p) = keep.iter().find(|p| !self.parameterizations.contains(p)) {
            return Err(invalid("parameterizations", format!("`{p}` is not in this ablation")));
        }
        self.parameterizations.retain(|p| keep.contains(p));
        Ok(self)
    }

    /// The names of the arms: `mse`, then the variants.
    pub fn arms(&self) -> Vec<String> {
        std::iter::once("mse".to_string())
            .chain(self.variants.iter().map(|v| v.name.clone()))
            .chain(self.pixel_arm.then(|| "pixel".to_string()))
            .collect()
    }

    /// The small smoke version (minutes on 2 cores): one seed, the first parameterisation
    /// only (eps for the default; what `--only` left, when given first), 5000 training
    /// images, a few hundred steps, 100 evaluation images.
    pub fn quick(mut self) -> Self {
        self.output_dir = self.output_dir.with_file_name(format!(
            "{}-quick",
            self.output_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        ));
        self.parameterizations.truncate(1);
        self.seeds.truncate(1);
        self.autoencoder_steps = self.autoencoder_steps.min(100);
        self.pretrain_steps = self.pretrain_steps.min(150);
        self.continuation_steps = self.continuation_steps.min(30);
        self.eval_count = self.eval_count.min(100);
        self.eval_steps = self.eval_steps.min(10);
        self.train_images = Some(self.train_images.unwrap_or(usize::MAX).min(5000));
        self
    }
}
