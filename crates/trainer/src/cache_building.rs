//! Building a latent cache: encode a dataset once with an autoencoder (distribution mean,
//! optionally also the horizontally flipped images), in shards written atomically, then the
//! manifest. Rerunning after an interruption skips the shards already complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_autoencoder::Autoencoder;
use lpl_data::cache::{self, CACHE_FORMAT, CacheManifest};
use lpl_data::{DatasetConfig, ImageSource, LabeledImages, Split, preprocess};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, invalid, parse_toml, read_text};
use crate::progress;

/// `lpl cache --config FILE`: which autoencoder encodes which dataset into where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// A diffusers VAE folder, a TAESD pair folder or an lpl autoencoder checkpoint.
    pub autoencoder: PathBuf,
    /// The dataset and its preprocessing.
    pub data: DatasetConfig,
    /// Which split to encode (`train` or `test`).
    #[serde(default = "default_split")]
    pub split: Split,
    /// Also cache the latents of horizontally flipped images (for random-flip training).
    #[serde(default)]
    pub flip: bool,
    /// Samples per shard.
    #[serde(default = "default_shard_size")]
    pub shard_size: usize,
    /// Images per encoder batch.
    #[serde(default = "default_encode_batch")]
    pub batch: usize,
    /// The cache directory.
    pub output_dir: PathBuf,
}

fn default_split() -> Split {
    Split::Train
}
fn default_shard_size() -> usize {
    8192
}
fn default_encode_batch() -> usize {
    256
}

impl CacheConfig {
    /// Reads and validates a TOML file; errors name the file, line and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = parse_toml(&read_text(path)?, path)?;
        config.data.validate()?;
        if config.shard_size == 0 || config.batch == 0 {
            return Err(invalid("shard_size", "shard_size and batch must be >= 1"));
        }
        Ok(config)
    }

    /// Loads the dataset, opens the autoencoder and builds (or completes) the cache.
    pub fn build(&self, device: Device) -> Result<CacheManifest> {
        let data = self.data.open(self.split)?;
        let mut ae = lpl_autoencoder::open(&self.autoencoder, device, Kind::Float)?;
        ae.set_requires_grad(false);
        let options = CacheOptions {
            pad_to: None,
            shard_size: self.shard_size,
            batch: self.batch,
            flip: self.flip,
            num_classes: Some(data.num_classes()),
            autoencoder_name: self.autoencoder.display().to_string(),
        };
        build_cache_from(ae.as_ref(), data.as_ref(), &options, &self.output_dir, device)
    }
}

/// How to encode.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Zero-pad images to this square size first.
    pub pad_to: Option<i64>,
    /// Samples per shard.
    pub shard_size: usize,
    /// Images per encoder batch.
    pub batch: usize,
    /// Also cache the latents of horizontally flipped images.
    pub flip: bool,
    /// Number of classes of `labels`.
    pub num_classes: Option<i64>,
    /// Where the autoencoder came from (recorded in the manifest).
    pub autoencoder_name: String,
}

/// Encodes u8 `images` `(N, C, h, w)` (and `labels` `(N,)`) into a cache at `out`.
pub fn build_cache(
    ae: &dyn Autoencoder,
    images: &Tensor,
    labels: Option<&Tensor>,
    options: &CacheOptions,
    out: &Path,
    device: Device,
) -> Result<CacheManifest> {
    let n = images.size()[0];
    let source = LabeledImages {
        images: images.shallow_clone(),
        labels: labels
            .map_or_else(|| Tensor::zeros([n], (Kind::Int64, Device::Cpu)), Tensor::shallow_clone),
        num_classes: options.num_classes.unwrap_or(1),
    };
    build_cache_from(ae, &source, options, out, device)
}

/// Encodes an [`ImageSource`] into a cache at `out`, one shard's images in memory at a time
/// (labels are stored when `options.num_classes` is set). A shard already on disk is kept
/// when its metadata says it was made from the same images by the same autoencoder.
pub fn build_cache_from(
    ae: &dyn Autoencoder,
    source: &dyn ImageSource,
    options: &CacheOptions,
    out: &Path,
    device: Device,
) -> Result<CacheManifest> {
    if options.shard_size == 0 || options.batch == 0 {
        return Err(invalid("shard_size", "shard size and batch must be >= 1"));
    }
    std::fs::create_dir_all(out).map_err(|e| invalid("out", format!("{}: {e}", out.display())))?;
    for stale in lpl_tensor_io::remove_stale_temporaries(out) {
        tracing::info!("removed {}, left by an interrupted write", stale.display());
    }
    let codec = ae.codec().clone();
    let fingerprint = ae.fingerprint()?;
    let n = source.len();
    let encode = |x: &Tensor| -> Result<Tensor> {
        let x = codec.pixels_to_input(&preprocess::to_unit_range(x)?).to_device(device);
        Ok(codec.to_model(&ae.encode(&x)?.mode())?.to_kind(Kind::Float).to_device(Device::Cpu))
    };
    let prepare = |x: Tensor| -> Result<Tensor> {
        Ok(match options.pad_to {
            Some(s) => preprocess::pad_to(&x, s)?,
            None => x,
        })
    };
    let bar = progress::bar(n as u64, "cache");
    let mut shards = Vec::new();
    let (mut sum, mut sum_sq, mut latent_shape) = (None::<Tensor>, None::<Tensor>, [0i64; 3]);
    let (mut count, mut image_size) = (0i64, [0i64; 2]);
    for (i, start) in (0..n).step_by(options.shard_size).enumerate() {
        let len = (options.shard_size as i64).min(n - start);
        let path = out.join(cache::shard_name(i));
        let metadata: BTreeMap<String, String> = [
            ("lpl.autoencoder".to_string(), fingerprint.clone()),
            ("lpl.source_range".to_string(), format!("{start}+{len}")),
            ("lpl.flip".to_string(), options.flip.to_string()),
        ]
        .into();
        let kept = cache::shard_count(&path).is_some()
            && lpl_tensor_io::read_metadata(&path)
                .is_ok_and(|m| metadata.iter().all(|(k, v)| m.get(k) == Some(v)));
        let latents = if kept {
            tracing::info!("{} is complete: kept", path.display());
            bar.inc(len as u64);
            lpl_tensor_io::read_tensors(&path)?["latents"].shallow_clone()
        } else {
            let chunk = source.read(start, len)?;
            let images = prepare(chunk.images)?;
            let (_, _, ih, iw) = images.size4()?;
            image_size = [ih, iw];
            let (latents, flipped) = tch::no_grad(|| -> Result<(Tensor, Option<Tensor>)> {
                let (mut parts, mut flips) = (Vec::new(), Vec::new());
                for x in images.split(options.batch as i64, 0) {
                    parts.push(encode(&x)?);
                    if options.flip {
                        flips.push(encode(&x.flip([3]))?);
                    }
                    bar.inc(x.size()[0] as u64);
                }
                Ok((Tensor::cat(&parts, 0), options.flip.then(|| Tensor::cat(&flips, 0))))
            })?;
            let labels = options.num_classes.map(|_| chunk.labels.shallow_clone());
            cache::write_shard_with_metadata(
                out,
                i,
                &latents,
                flipped.as_ref(),
                labels.as_ref(),
                &metadata,
            )?;
            latents
        };
        let (shard_n, c, h, w) = latents.size4()?;
        latent_shape = [c, h, w];
        count += shard_n;
        let z = latents.to_kind(Kind::Double);
        let s = z.sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        let s2 = z.square().sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        sum = Some(sum.map_or(s.shallow_clone(), |a| a + &s));
        sum_sq = Some(sum_sq.map_or(s2.shallow_clone(), |a| a + &s2));
        shards.push(cache::ShardInfo { file: cache::shard_name(i), count: shard_n });
    }
    bar.finish_and_clear();
    if image_size == [0, 0] {
        // every shard was kept: the image size is the first image's, prepared
        let first = prepare(source.read(0, 1)?.images)?;
        let (_, _, ih, iw) = first.size4()?;
        image_size = [ih, iw];
    }
    let per_channel = (count * latent_shape[1] * latent_shape[2]) as f64;
    let mean =
        sum.map(|s| s / per_channel).ok_or_else(|| invalid("images", "the dataset is empty"))?;
    let var =
        sum_sq.map(|s| s / per_channel).ok_or_else(|| invalid("images", "the dataset is empty"))?
            - mean.square();
    let manifest = CacheManifest {
        format: CACHE_FORMAT.to_string(),
        autoencoder: options.autoencoder_name.clone(),
        autoencoder_fingerprint: fingerprint,
        codec,
        image_size,
        latent_shape,
        count,
        num_classes: options.num_classes,
        flipped: options.flip,
        channel_mean: Vec::<f64>::try_from(mean)?,
        channel_std: Vec::<f64>::try_from(var.clamp_min(0.0).sqrt())?,
        shards,
    };
    cache::write_manifest(out, &manifest)?;
    Ok(manifest)
}
