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
use rayon::prelude::*;
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
    write_shard_with_metadata(dir, i, latents, flipped, labels, &BTreeMap::new())
}

/// [`write_shard`] with string metadata in the file (what a resumed build checks before it
/// keeps the shard: the autoencoder, the source range).
pub fn write_shard_with_metadata(
    dir: &Path,
    i: usize,
    latents: &Tensor,
    flipped: Option<&Tensor>,
    labels: Option<&Tensor>,
    metadata: &BTreeMap<String, String>,
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
    lpl_tensor_io::save(&tensors, metadata, &path).map_err(|e| format_err(&path, e.to_string()))?;
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

/// One shard, memory-mapped, with the byte offsets of its tensors.
#[derive(Debug)]
struct MappedShard {
    map: memmap2::Mmap,
    latents: usize,
    flipped: Option<usize>,
    labels: Option<usize>,
}

/// A latent cache opened for reading: the manifest checked and every shard memory-mapped
/// (nothing is read until batches are gathered, so caches larger than RAM work; the page
/// cache keeps hot shards in memory).
#[derive(Debug)]
pub struct LatentCache {
    /// Its manifest.
    pub manifest: CacheManifest,
    /// The directory.
    pub dir: PathBuf,
    shards: Vec<MappedShard>,
    /// First sample index of each shard, then the total.
    starts: Vec<i64>,
}

/// A batch gathered from a cache.
#[derive(Debug)]
pub struct LatentBatch {
    /// `(B, C, h, w)` f32 model-space latents on the CPU.
    pub latents: Tensor,
    /// `(B,)` i64 labels, when the cache has them.
    pub labels: Option<Tensor>,
    /// The sample indices.
    pub indices: Vec<i64>,
}

fn map_shard(path: &Path, manifest: &CacheManifest, count: i64) -> Result<MappedShard> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only and shards are never modified in place (they are written
    // to a temporary file and renamed); truncating a shard while a run reads it is outside
    // what we support, as for any memory-mapped dataset.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
    let (header, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
        format_err(path, format!("not a complete safetensors shard ({e}); rebuild the cache"))
    })?;
    // the content digest recorded when the shard was written (SHA-256 at about 1-2 GB/s per
    // core, on every shard in parallel: seconds for a paper-scale cache)
    lpl_tensor_io::verify_bytes(path, &map).map_err(|e| match e {
        lpl_tensor_io::TensorIoError::Damaged { .. } => {
            format_err(path, format!("{e}; rebuild the cache (`lpl cache`)"))
        }
        other => format_err(path, other.to_string()),
    })?;
    let base = 8 + header;
    let [c, h, w] = manifest.latent_shape;
    let locate = |name: &str, dtype: safetensors::Dtype, shape: Vec<usize>| -> Result<usize> {
        let info =
            meta.info(name).ok_or_else(|| format_err(path, format!("no `{name}` tensor")))?;
        if info.dtype != dtype || info.shape != shape {
            return Err(format_err(
                path,
                format!(
                    "`{name}` is {:?} {:?}, the manifest says {dtype:?} {shape:?}",
                    info.dtype, info.shape
                ),
            ));
        }
        Ok(base + info.data_offsets.0)
    };
    let latent_shape = vec![count as usize, c as usize, h as usize, w as usize];
    Ok(MappedShard {
        latents: locate("latents", safetensors::Dtype::F32, latent_shape.clone())?,
        flipped: if manifest.flipped {
            Some(locate("latents_flipped", safetensors::Dtype::F32, latent_shape)?)
        } else {
            None
        },
        labels: if manifest.num_classes.is_some() {
            Some(locate("labels", safetensors::Dtype::I64, vec![count as usize])?)
        } else {
            None
        },
        map,
    })
}

impl LatentCache {
    /// Reads `dir/manifest.json` and maps every shard, checking each shard's header, dtypes
    /// and shapes against the manifest, that the file is complete and that its tensors match
    /// the content digest recorded when it was written; an error names the file at fault.
    /// Shards must be plain file names inside `dir`.
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
        if manifest.latent_shape.iter().any(|&d| d < 1) {
            return Err(format_err(&path, format!("latent_shape {:?}", manifest.latent_shape)));
        }
        let mut starts = vec![0i64];
        for shard in &manifest.shards {
            // a plain file name inside the cache directory: nothing outside it is opened
            let plain = !shard.file.is_empty()
                && Path::new(&shard.file).file_name() == Some(std::ffi::OsStr::new(&shard.file))
                && shard.file != ".."
                && !shard.file.contains(['/', '\\']);
            if !plain {
                return Err(format_err(
                    &path,
                    format!("shard `{}` is not a file name inside the cache directory", shard.file),
                ));
            }
            let next = starts[starts.len() - 1].checked_add(shard.count);
            match next {
                Some(next) if shard.count >= 1 => starts.push(next),
                _ => {
                    return Err(format_err(
                        &path,
                        format!("shard `{}` has count {}", shard.file, shard.count),
                    ));
                }
            }
        }
        let shards = manifest
            .shards
            .par_iter()
            .map(|shard| map_shard(&dir.join(&shard.file), &manifest, shard.count))
            .collect::<Result<Vec<_>>>()?;
        let total = starts[starts.len() - 1];
        if total != manifest.count {
            return Err(format_err(
                &path,
                format!("shards hold {total} samples, the manifest says {}", manifest.count),
            ));
        }
        Ok(Self { manifest, dir: dir.to_path_buf(), shards, starts })
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

    fn locate(&self, index: i64) -> Result<(usize, usize)> {
        if index < 0 || index >= self.manifest.count {
            return Err(DataError::Invalid(format!(
                "sample {index} outside the cache's {} samples",
                self.manifest.count
            )));
        }
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        Ok((shard, (index - self.starts[shard]) as usize))
    }

    /// Gathers the samples `indices`: sample `i` comes from the flipped latents when
    /// `flip[i]` (requires a cache built with flips; `flip` empty = none flipped).
    pub fn gather(&self, indices: &[i64], flip: &[bool]) -> Result<LatentBatch> {
        if !flip.is_empty() && flip.len() != indices.len() {
            return Err(DataError::Invalid(format!(
                "{} flip flags for {} indices",
                flip.len(),
                indices.len()
            )));
        }
        if flip.iter().any(|&f| f) && !self.manifest.flipped {
            return Err(DataError::Invalid(format!(
                "{}: the cache holds no flipped latents (build it with flips)",
                self.dir.display()
            )));
        }
        let [c, h, w] = self.manifest.latent_shape;
        let row = (c * h * w) as usize * 4;
        let places = indices.iter().map(|&i| self.locate(i)).collect::<Result<Vec<_>>>()?;
        let mut bytes = vec![0u8; row * indices.len()];
        bytes.par_chunks_mut(row.max(1)).zip(places.par_iter()).enumerate().for_each(
            |(k, (out, &(shard, local)))| {
                let s = &self.shards[shard];
                let base = match (flip.get(k), s.flipped) {
                    (Some(true), Some(f)) => f,
                    _ => s.latents,
                };
                let start = base + local * row;
                out.copy_from_slice(&s.map[start..start + row]);
            },
        );
        let latents =
            Tensor::f_from_data_size(&bytes, &[indices.len() as i64, c, h, w], Kind::Float)?;
        let labels = if self.manifest.num_classes.is_some() {
            let mut values = Vec::with_capacity(indices.len());
            for &(shard, local) in &places {
                let s = &self.shards[shard];
                let start = s.labels.unwrap_or(0) + local * 8;
                let mut b = [0u8; 8];
                b.copy_from_slice(&s.map[start..start + 8]);
                values.push(i64::from_le_bytes(b));
            }
            Some(Tensor::from_slice(&values))
        } else {
            None
        };
        Ok(LatentBatch { latents, labels, indices: indices.to_vec() })
    }

    /// Every sample, in order (small caches, tests).
    pub fn read_all(&self) -> Result<LatentBatch> {
        let all: Vec<i64> = (0..self.manifest.count).collect();
        self.gather(&all, &[])
    }

    /// Every flipped sample, in order.
    pub fn read_all_flipped(&self) -> Result<LatentBatch> {
        let all: Vec<i64> = (0..self.manifest.count).collect();
        self.gather(&all, &vec![true; all.len()])
    }
}
