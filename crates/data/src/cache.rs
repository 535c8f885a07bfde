//! The latent cache: a dataset encoded once into sharded safetensors plus a manifest that
//! records the codec, the autoencoder's identity, sizes, counts and per-channel statistics.
//!
//! Layout of a cache directory: `manifest.json` (written last, atomically) and
//! `shard-00000.safetensors`, ... each holding `latents` `(n, C, h, w)` f32 in model space
//! (after the codec), optionally `latents_flipped` (the horizontally flipped images' latents)
//! and `labels` `(n,)` i64. Shards are written atomically, so an interrupted build resumes
//! by skipping the complete ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_autoencoder::LatentCodec;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{DataError, Result};

/// The format tag of manifests written by this version.
pub const CACHE_FORMAT: &str = "lpl-latent-cache/1";

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name inside the cache directory.
    pub file: String,
    /// Samples in it.
    pub count: i64,
}

/// What a cache holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheManifest {
    /// [`CACHE_FORMAT`].
    pub format: String,
    /// Where the autoencoder came from (for people).
    pub autoencoder: String,
    /// The autoencoder's weights fingerprint (see `lpl_tensor_io::fingerprint`).
    pub autoencoder_fingerprint: String,
    /// The latent constants used to go to model space.
    pub codec: LatentCodec,
    /// Encoded image size `[H, W]` (after padding).
    pub image_size: [i64; 2],
    /// `[C, h, w]` of one latent.
    pub latent_shape: [i64; 3],
    /// Total samples.
    pub count: i64,
    /// Classes of the labels, if any.
    pub num_classes: Option<i64>,
    /// Whether shards hold `latents_flipped`.
    pub flipped: bool,
    /// Per-channel mean of the model-space latents.
    pub channel_mean: Vec<f64>,
    /// Per-channel std of the model-space latents.
    pub channel_std: Vec<f64>,
    /// The shards in order.
    pub shards: Vec<ShardInfo>,
}

/// Name of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.safetensors")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn format_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format { path: path.to_path_buf(), message: message.into() }
}

/// The number of samples in a complete shard file, or `None` if it is missing or damaged.
pub fn shard_count(path: &Path) -> Option<i64> {
    let tensors = lpl_tensor_io::read_tensors(path).ok()?;
    tensors.get("latents").map(|t| t.size()[0])
}

/// Writes shard `i` atomically: `latents` `(n, C, h, w)`, optional flipped latents and
/// labels.
pub fn write_shard(
    dir: &Path,
    i: usize,
    latents: &Tensor,
    flipped: Option<&Tensor>,
    labels: Option<&Tensor>,
) -> Result<ShardInfo> {
    let mut tensors = vec![("latents".to_string(), latents.to_kind(Kind::Float).contiguous())];
    if let Some(f) = flipped {
        tensors.push(("latents_flipped".to_string(), f.to_kind(Kind::Float).contiguous()));
    }
    if let Some(l) = labels {
        tensors.push(("labels".to_string(), l.to_kind(Kind::Int64).contiguous()));
    }
    let file = shard_name(i);
    let path = dir.join(&file);
    lpl_tensor_io::save(&tensors, &BTreeMap::new(), &path)
        .map_err(|e| format_err(&path, e.to_string()))?;
    Ok(ShardInfo { file, count: latents.size()[0] })
}

/// Writes the manifest atomically (the last step of building a cache).
pub fn write_manifest(dir: &Path, manifest: &CacheManifest) -> Result<()> {
    let path = dir.join("manifest.json");
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| format_err(&path, e.to_string()))?;
    lpl_tensor_io::write_atomically(&path, text.as_bytes())
        .map_err(|e| format_err(&path, e.to_string()))
}

/// A cache read into memory.
#[derive(Debug)]
pub struct LatentCache {
    /// Its manifest.
    pub manifest: CacheManifest,
    /// `(N, C, h, w)` f32 model-space latents.
    pub latents: Tensor,
    /// `(N, C, h, w)` latents of the flipped images, when cached.
    pub latents_flipped: Option<Tensor>,
    /// `(N,)` i64 labels, when cached.
    pub labels: Option<Tensor>,
    /// The directory.
    pub dir: PathBuf,
}

impl LatentCache {
    /// Reads `dir/manifest.json` and every shard, checking counts and shapes; an error names
    /// the file at fault.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let manifest: CacheManifest =
            serde_json::from_str(&text).map_err(|e| format_err(&path, e.to_string()))?;
        if manifest.format != CACHE_FORMAT {
            return Err(format_err(
                &path,
                format!("format `{}`, this version reads `{CACHE_FORMAT}`", manifest.format),
            ));
        }
        let [c, h, w] = manifest.latent_shape;
        let (mut latents, mut flipped, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for shard in &manifest.shards {
            let p = dir.join(&shard.file);
            let t = lpl_tensor_io::read_tensors(&p).map_err(|e| format_err(&p, e.to_string()))?;
            let l = t.get("latents").ok_or_else(|| format_err(&p, "no `latents` tensor"))?;
            if l.size() != [shard.count, c, h, w] {
                return Err(format_err(
                    &p,
                    format!(
                        "`latents` is {:?}, the manifest says {:?}",
                        l.size(),
                        [shard.count, c, h, w]
                    ),
                ));
            }
            latents.push(l.shallow_clone());
            if manifest.flipped {
                flipped.push(
                    t.get("latents_flipped")
                        .ok_or_else(|| format_err(&p, "no `latents_flipped`"))?
                        .shallow_clone(),
                );
            }
            if manifest.num_classes.is_some() {
                labels.push(
                    t.get("labels").ok_or_else(|| format_err(&p, "no `labels`"))?.shallow_clone(),
                );
            }
        }
        let latents = Tensor::f_cat(&latents, 0)?;
        if latents.size()[0] != manifest.count {
            return Err(format_err(
                &path,
                format!(
                    "shards hold {} samples, the manifest says {}",
                    latents.size()[0],
                    manifest.count
                ),
            ));
        }
        Ok(Self {
            latents,
            latents_flipped: if manifest.flipped {
                Some(Tensor::f_cat(&flipped, 0)?)
            } else {
                None
            },
            labels: if manifest.num_classes.is_some() {
                Some(Tensor::f_cat(&labels, 0)?)
            } else {
                None
            },
            manifest,
            dir: dir.to_path_buf(),
        })
    }

    /// Checks that the cache was made with the autoencoder `fingerprint` and `codec`; says
    /// which differs.
    pub fn check_autoencoder(&self, fingerprint: &str, codec: &LatentCodec) -> Result<()> {
        let path = self.dir.join("manifest.json");
        if self.manifest.autoencoder_fingerprint != fingerprint {
            return Err(format_err(
                &path,
                format!(
                    "made with a different autoencoder (fingerprint {} from {}, expected {fingerprint}): rebuild the cache",
                    self.manifest.autoencoder_fingerprint, self.manifest.autoencoder
                ),
            ));
        }
        if &self.manifest.codec != codec {
            return Err(format_err(&path, "made with a different codec: rebuild the cache"));
        }
        Ok(())
    }

    /// Samples in the cache.
    pub fn len(&self) -> i64 {
        self.manifest.count
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }
}
