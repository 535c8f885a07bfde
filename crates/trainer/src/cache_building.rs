//! Building a latent cache: encode a dataset once with an autoencoder (distribution mean,
//! optionally also the horizontally flipped images), in shards written atomically, then the
//! manifest. Rerunning after an interruption skips the shards already complete.

use std::path::{Path, PathBuf};

use lpl_autoencoder::Autoencoder;
use lpl_data::cache::{self, CACHE_FORMAT, CacheManifest};
use lpl_data::{DatasetConfig, Split, preprocess};
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
        let data = self.data.load(self.split)?;
        let mut ae = lpl_autoencoder::open(&self.autoencoder, device, Kind::Float)?;
        ae.set_requires_grad(false);
        let options = CacheOptions {
            pad_to: None,
            shard_size: self.shard_size,
            batch: self.batch,
            flip: self.flip,
            num_classes: Some(data.num_classes),
            autoencoder_name: self.autoencoder.display().to_string(),
        };
        build_cache(
            ae.as_ref(),
            &data.images,
            Some(&data.labels),
            &options,
            &self.output_dir,
            device,
        )
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
    if options.shard_size == 0 || options.batch == 0 {
        return Err(invalid("shard_size", "shard size and batch must be >= 1"));
    }
    std::fs::create_dir_all(out).map_err(|e| invalid("out", format!("{}: {e}", out.display())))?;
    let codec = ae.codec().clone();
    let fingerprint = lpl_tensor_io::fingerprint(&ae.named_weights())?;
    let n = images.size()[0];
    let encode = |x: &Tensor| -> Result<Tensor> {
        let x = codec.pixels_to_input(&preprocess::to_unit_range(x)?).to_device(device);
        Ok(codec.to_model(&ae.encode(&x)?.mode())?.to_kind(Kind::Float).to_device(Device::Cpu))
    };
    let prepared = match options.pad_to {
        Some(s) => preprocess::pad_to(images, s)?,
        None => images.shallow_clone(),
    };
    let (_, _, ih, iw) = prepared.size4()?;
    let bar = progress::bar(n as u64, "cache");
    let mut shards = Vec::new();
    let (mut sum, mut sum_sq, mut latent_shape) = (None::<Tensor>, None::<Tensor>, [0i64; 3]);
    for (i, start) in (0..n).step_by(options.shard_size).enumerate() {
        let len = (options.shard_size as i64).min(n - start);
        let path = out.join(cache::shard_name(i));
        let latents = if cache::shard_count(&path) == Some(len) {
            tracing::info!("{} is complete: kept", path.display());
            lpl_tensor_io::read_tensors(&path)?["latents"].shallow_clone()
        } else {
            let (latents, flipped) = tch::no_grad(|| -> Result<(Tensor, Option<Tensor>)> {
                let (mut parts, mut flips) = (Vec::new(), Vec::new());
                for s in (start..start + len).step_by(options.batch) {
                    let b = (options.batch as i64).min(start + len - s);
                    let x = prepared.narrow(0, s, b);
                    parts.push(encode(&x)?);
                    if options.flip {
                        flips.push(encode(&x.flip([3]))?);
                    }
                    bar.inc(b as u64);
                }
                Ok((Tensor::cat(&parts, 0), options.flip.then(|| Tensor::cat(&flips, 0))))
            })?;
            let shard_labels = labels.map(|l| l.narrow(0, start, len));
            cache::write_shard(out, i, &latents, flipped.as_ref(), shard_labels.as_ref())?;
            latents
        };
        let (_, c, h, w) = latents.size4()?;
        latent_shape = [c, h, w];
        let z = latents.to_kind(Kind::Double);
        let s = z.sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        let s2 = z.square().sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        sum = Some(sum.map_or(s.shallow_clone(), |a| a + &s));
        sum_sq = Some(sum_sq.map_or(s2.shallow_clone(), |a| a + &s2));
        shards.push(cache::ShardInfo { file: cache::shard_name(i), count: len });
    }
    bar.finish_and_clear();
    let count = (n * latent_shape[1] * latent_shape[2]) as f64;
    let mean = sum.map(|s| s / count).ok_or_else(|| invalid("images", "the dataset is empty"))?;
    let var = sum_sq.map(|s| s / count).ok_or_else(|| invalid("images", "the dataset is empty"))?
        - mean.square();
    let manifest = CacheManifest {
        format: CACHE_FORMAT.to_string(),
        autoencoder: options.autoencoder_name.clone(),
        autoencoder_fingerprint: fingerprint,
        codec,
        image_size: [ih, iw],
        latent_shape,
        count: n,
        num_classes: options.num_classes,
        flipped: options.flip,
        channel_mean: Vec::<f64>::try_from(mean)?,
        channel_std: Vec::<f64>::try_from(var.clamp_min(0.0).sqrt())?,
        shards,
    };
    cache::write_manifest(out, &manifest)?;
    Ok(manifest)
}
