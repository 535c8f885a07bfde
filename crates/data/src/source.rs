//! One dataset description for configs: which source, where, and how images are brought to
//! the training size. Fashion-MNIST has its own train/test split; for image folders and the
//! emoji set every 20th image (index 19, 39, ...) is the test split, the rest is training.
//!
//! [`DatasetConfig::open`] gives an [`ImageSource`] that decodes image files a chunk at a
//! time (ImageNet does not fit in memory), [`DatasetConfig::load`] everything at once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::emoji::NotoEmoji;
use crate::error::{DataError, Result};
use crate::folder::{Decoded, ImageFolder, ReadOptions, decode_files};
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
            "folder" if self.dir.is_none() => {
                return bad("dir", "the `folder` dataset needs a directory".into());
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

    /// The directory (required for folders).
    fn need_dir(&self) -> Result<PathBuf> {
        self.dir.clone().ok_or_else(|| {
            DataError::Invalid(format!(
                "`data.dir`: the `{}` dataset needs a directory",
                self.dataset
            ))
        })
    }

    /// The emoji set's default place: `$LPL_HOME/assets/emoji-datasource-google` (where
    /// `cargo xtask setup` puts it).
    fn dir_or_default(&self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        if self.dataset == "emoji" {
            let home = std::env::var_os("LPL_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lpl")));
            if let Some(home) = home {
                return Ok(home.join("assets/emoji-datasource-google"));
            }
        }
        self.need_dir()
    }

    /// Every file the dataset is read from, both splits, in reading order (provenance).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        self.validate()?;
        Ok(match self.dataset.as_str() {
            "fashion_mnist" => FashionMnist::files(self.dir.as_deref())?,
            "folder" => {
                ImageFolder::scan(&self.need_dir()?)?.entries.into_iter().map(|(p, _)| p).collect()
            }
            _ => {
                let dir = self.dir_or_default()?;
                let (files, _) = NotoEmoji::list(&dir)?;
                std::iter::once(dir.join("emoji.json"))
                    .chain(files.into_iter().map(|(p, _)| p))
                    .collect()
            }
        })
    }

    /// The images of `split`, decoded on demand.
    pub fn open(&self, split: Split) -> Result<Box<dyn ImageSource>> {
        self.validate()?;
        let (entries, classes): (Vec<(PathBuf, i64)>, usize) = match self.dataset.as_str() {
            "fashion_mnist" => {
                let data = self.pad(FashionMnist::load(self.dir.as_deref(), split)?)?;
                return Ok(Box::new(data));
            }
            "folder" => {
                let folder = ImageFolder::scan(&self.need_dir()?)?;
                let n = folder.classes.len();
                (folder.entries.into_iter().map(|(p, l)| (p, l.unwrap_or(0))).collect(), n)
            }
            _ => {
                let (files, classes) = NotoEmoji::list(&self.dir_or_default()?)?;
                (files, classes.len())
            }
        };
        let entries = entries
            .into_iter()
            .enumerate()
            .filter(|(i, _)| (*i as i64 % TEST_EVERY == TEST_EVERY - 1) == (split == Split::Test))
            .map(|(_, e)| e)
            .collect();
        Ok(Box::new(FileSource {
            entries,
            num_classes: classes.max(1) as i64,
            options: self.read_options(),
            pad_to: self.pad_to,
        }))
    }

    /// Loads `split`: `(N, C, H, W)` u8 images (resized and padded as configured) with labels
    /// (a flat folder has one class).
    pub fn load(&self, split: Split) -> Result<LabeledImages> {
        let source = self.open(split)?;
        source.read(0, source.len())
    }

    fn pad(&self, mut data: LabeledImages) -> Result<LabeledImages> {
        if let Some(size) = self.pad_to {
            data.images = preprocess::pad_to(&data.images, size)?;
        }
        Ok(data)
    }
}

/// Labelled images that can be read a range at a time.
pub trait ImageSource {
    /// Images in the source.
    fn len(&self) -> i64;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes of the labels.
    fn num_classes(&self) -> i64;

    /// Images `start..start + len`: `(n, C, H, W)` u8 and labels `(n,)`; `n < len` when
    /// undecodable files were skipped (within the tolerance).
    fn read(&self, start: i64, len: i64) -> Result<LabeledImages>;
}

impl ImageSource for LabeledImages {
    fn len(&self) -> i64 {
        self.images.size()[0]
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn read(&self, start: i64, len: i64) -> Result<LabeledImages> {
        Ok(LabeledImages {
            images: self.images.f_narrow(0, start, len)?,
            labels: self.labels.f_narrow(0, start, len)?,
            num_classes: self.num_classes,
        })
    }
}

/// Image files decoded a range at a time.
struct FileSource {
    entries: Vec<(PathBuf, i64)>,
    num_classes: i64,
    options: ReadOptions,
    pad_to: Option<i64>,
}

impl ImageSource for FileSource {
    fn len(&self) -> i64 {
        self.entries.len() as i64
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn read(&self, start: i64, len: i64) -> Result<LabeledImages> {
        let (s, e) =
            (start.max(0) as usize, ((start + len).max(0) as usize).min(self.entries.len()));
        let chunk = &self.entries[s.min(e)..e];
        let files: Vec<PathBuf> = chunk.iter().map(|(p, _)| p.clone()).collect();
        let Decoded { images, kept, .. } = decode_files(&files, &self.options)?;
        let labels: Vec<i64> = kept.iter().map(|&i| chunk[i].1).collect();
        let mut images = images;
        if let Some(size) = self.pad_to {
            images = preprocess::pad_to(&images, size)?;
        }
        Ok(LabeledImages {
            images,
            labels: Tensor::from_slice(&labels),
            num_classes: self.num_classes,
        })
    }
}
