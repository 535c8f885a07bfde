//! One dataset description for configs: which source, where, and how images are brought to
//! the training size. Fashion-MNIST has its own train/test split; for image folders and the
//! emoji set every 20th image (index 19, 39, ...) is the test split, the rest is training.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::emoji::NotoEmoji;
use crate::error::{DataError, Result};
use crate::folder::{ReadOptions, read_folder};
use crate::idx::{FashionMnist, LabeledImages, Split};
use crate::preprocess::{self, ImagePipeline, ResizeMode};

/// Every `TEST_EVERY`-th image of a folder or the emoji set is held out as the test split.
pub const TEST_EVERY: i64 = 20;

fn default_max_skipped() -> f64 {
    0.01
}

/// A dataset and its preprocessing, as written in a TOML config (`[data]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// `fashion_mnist` (IDX files), `folder` (flat or one sub-folder per class) or `emoji`
    /// (the `package/` folder of npm `emoji-datasource-google`).
    pub dataset: String,
    /// Where the files are (Fashion-MNIST: default the Debian package's location; required
    /// for the others).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Zero-pad images to this square size after resizing (28 -> 32 for Fashion-MNIST).
    #[serde(default)]
    pub pad_to: Option<i64>,
    /// Decoded channels for folders and emoji (1 or 3; default 3).
    #[serde(default)]
    pub channels: Option<u32>,
    /// Resize folders and emoji to this square size (default: keep the decoded size).
    #[serde(default)]
    pub size: Option<u32>,
    /// How to resize.
    #[serde(default)]
    pub resize: ResizeMode,
    /// Tolerated fraction of undecodable image files.
    #[serde(default = "default_max_skipped")]
    pub max_skipped_fraction: f64,
}

impl DatasetConfig {
    /// Fashion-MNIST from `dir` (or the system location), padded to `pad_to`.
    pub fn fashion_mnist(dir: Option<PathBuf>, pad_to: Option<i64>) -> Self {
        Self {
            dataset: "fashion_mnist".into(),
            dir,
            pad_to,
            channels: None,
            size: None,
            resize: ResizeMode::default(),
            max_skipped_fraction: default_max_skipped(),
        }
    }

    /// Checks the fields; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, msg: String| Err(DataError::Invalid(format!("`data.{field}`: {msg}")));
        match self.dataset.as_str() {
            "fashion_mnist" => {}
            "folder" | "emoji" if self.dir.is_none() => {
                return bad("dir", format!("the `{}` dataset needs a directory", self.dataset));
            }
            "folder" | "emoji" => {}
            other => {
                return bad("dataset", format!("unknown `{other}` (fashion_mnist, folder, emoji)"));
            }
        }
        if let Some(c) = self.channels
            && c != 1
            && c != 3
        {
            return bad("channels", format!("must be 1 or 3, got {c}"));
        }
        if self.size == Some(0) || self.pad_to.is_some_and(|p| p < 1) {
            return bad("size", "sizes must be >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.max_skipped_fraction) {
            return bad(
                "max_skipped_fraction",
                format!("must be in [0, 1], got {}", self.max_skipped_fraction),
            );
        }
        Ok(())
    }

    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            pipeline: ImagePipeline {
                channels: self.channels.unwrap_or(3),
                size: self.size,
                resize: self.resize,
            },
            max_skipped_fraction: self.max_skipped_fraction,
        }
    }

    fn need_dir(&self) -> Result<PathBuf> {
        self.dir.clone().ok_or_else(|| {
            DataError::Invalid(format!(
                "`data.dir`: the `{}` dataset needs a directory",
                self.dataset
            ))
        })
    }

    /// Loads `split`: `(N, C, H, W)` u8 images (resized and padded as configured) with labels
    /// (a flat folder has one class).
    pub fn load(&self, split: Split) -> Result<LabeledImages> {
        self.validate()?;
        let data = match self.dataset.as_str() {
            "fashion_mnist" => return self.pad(FashionMnist::load(self.dir.as_deref(), split)?),
            "folder" => read_folder(&self.need_dir()?, &self.read_options())?,
            "emoji" => NotoEmoji::load(&self.need_dir()?, &self.read_options())?,
            other => {
                return Err(DataError::Invalid(format!(
                    "data.dataset: unknown dataset `{other}` (fashion_mnist, folder, emoji)"
                )));
            }
        };
        let n = data.images.size()[0];
        let labels =
            data.labels.unwrap_or_else(|| Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu)));
        let num_classes = data.classes.len().max(1) as i64;
        let index = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
        let test = index.remainder(TEST_EVERY).eq(TEST_EVERY - 1);
        let keep = match split {
            Split::Train => test.logical_not(),
            Split::Test => test,
        }
        .nonzero()
        .squeeze_dim(1);
        self.pad(LabeledImages {
            images: data.images.index_select(0, &keep),
            labels: labels.index_select(0, &keep),
            num_classes,
        })
    }

    fn pad(&self, mut data: LabeledImages) -> Result<LabeledImages> {
        if let Some(size) = self.pad_to {
            data.images = preprocess::pad_to(&data.images, size)?;
        }
        Ok(data)
    }
}
