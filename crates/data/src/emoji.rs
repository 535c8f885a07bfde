//! The Noto emoji set of the npm package `emoji-datasource-google`: 3,786 PNGs at 64x64
//! RGBA (`img/google/64/`; 1,911 emoji plus their skin-tone variations), labelled by the
//! category of `emoji.json` (10 categories, sorted by name; a skin-tone variation takes its
//! emoji's category). Alpha is composited onto white.
//!
//! Get it with `npm pack emoji-datasource-google && tar xzf emoji-datasource-google-*.tgz`
//! (the `package/` folder is the dataset directory); `cargo xtask setup` does this into
//! `$LPL_HOME/assets/emoji-datasource-google`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::Tensor;

use crate::error::{DataError, Result};
use crate::folder::{Decoded, FolderImages, ReadOptions, decode_files};

#[derive(Deserialize)]
struct Entry {
    image: String,
    category: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    skin_variations: Option<std::collections::BTreeMap<String, Variation>>,
}

#[derive(Deserialize)]
struct Variation {
    image: String,
    #[serde(default)]
    has_img_google: bool,
}

/// Image files with their class index.
pub type LabeledFiles = Vec<(PathBuf, i64)>;

/// The Noto emoji set.
pub struct NotoEmoji;

impl NotoEmoji {
    /// The images listed in `<dir>/emoji.json` that have a Google image, with their category
    /// index, and the sorted category names.
    pub fn list(dir: &Path) -> Result<(LabeledFiles, Vec<String>)> {
        let json = dir.join("emoji.json");
        let text = std::fs::read_to_string(&json).map_err(|source| DataError::Io {
            path: json.clone(),
            source,
        })
        .map_err(|e| {
            DataError::NotFound(format!(
                "{e}: the emoji set is the `package/` folder of the npm package emoji-datasource-google \
                 (npm pack emoji-datasource-google; tar xzf emoji-datasource-google-*.tgz)"
            ))
        })?;
        let entries: Vec<Entry> = serde_json::from_str(&text)
            .map_err(|e| DataError::Format { path: json.clone(), message: e.to_string() })?;
        let classes: Vec<String> = entries
            .iter()
            .map(|e| e.category.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let images = dir.join("img/google/64");
        let mut files = Vec::new();
        for e in &entries {
            let label = classes.iter().position(|c| c == &e.category).unwrap_or(0) as i64;
            if e.has_img_google {
                files.push((images.join(&e.image), label));
            }
            for v in e.skin_variations.iter().flat_map(|m| m.values()) {
                if v.has_img_google {
                    files.push((images.join(&v.image), label));
                }
            }
        }
        Ok((files, classes))
    }

    /// Decodes the set: `(N, C, 64, 64)` u8 (or the pipeline's size) with labels.
    pub fn load(dir: &Path, options: &ReadOptions) -> Result<FolderImages> {
        let (entries, classes) = Self::list(dir)?;
        let files: Vec<PathBuf> = entries.iter().map(|(p, _)| p.clone()).collect();
        let Decoded { images, kept, skipped } = decode_files(&files, options)?;
        let labels: Vec<i64> = kept.iter().map(|&i| entries[i].1).collect();
        Ok(FolderImages {
            images,
            labels: Some(Tensor::from_slice(&labels)),
            classes,
            files: kept.iter().map(|&i| files[i].clone()).collect(),
            skipped,
        })
    }
}
