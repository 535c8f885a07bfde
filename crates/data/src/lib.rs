//! # lpl-data
//!
//! Feeding a latent diffusion trainer: image sources ([`idx`] files such as Fashion-MNIST,
//! image [`folder`]s flat or one sub-folder per class, the Noto [`emoji`] set), preprocessing
//! ([`preprocess`]: alpha over white, area / bicubic resizing, ADM center crop, padding,
//! flips), decoding on a thread pool, the sharded latent [`cache`] (manifest with codec and
//! autoencoder fingerprint, atomic shards, memory-mapped reading) and deterministic,
//! resumable shuffled batches ([`shuffle`]) prefetched on a background thread
//! ([`prefetch`]).
//!
//! Standalone use: write a small class-folder dataset, read it at 16x16, store "latents" in
//! a cache, and stream shuffled batches from it, then resume mid-epoch.
//!
//! ```
//! use std::sync::Arc;
//! use lpl_autoencoder::LatentCodec;
//! use lpl_data::cache::{self, CacheManifest, CACHE_FORMAT};
//! use lpl_data::folder::{read_folder, write_pngs, ReadOptions};
//! use lpl_data::preprocess::{to_unit_range, ResizeMode};
//! use lpl_data::{BatchCursor, CacheBatches, LatentCache};
//! use tch::{Device, Kind, Tensor};
//!
//! let root = std::env::temp_dir().join(format!("lpl-data-doc-{}", std::process::id()));
//! for (class, value) in [("boots", 0.2), ("shirts", 0.8)] {
//!     let images = Tensor::full([3, 3, 20, 24], value, (Kind::Float, Device::Cpu));
//!     write_pngs(&images, &root.join("images").join(class), 0)?;
//! }
//! let options = ReadOptions::new(3).resized(16, ResizeMode::AdmCenterCrop);
//! let data = read_folder(&root.join("images"), &options)?;
//! assert_eq!(data.images.size(), vec![6, 3, 16, 16]); // (N, C, H, W) u8
//! assert_eq!(data.classes, vec!["boots", "shirts"]);
//!
//! // A cache normally holds an autoencoder's latents (lpl-trainer's `build_cache`); here the
//! // downsampled images stand in for them.
//! let latents = to_unit_range(&data.images)?.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None::<i64>);
//! let dir = root.join("cache");
//! std::fs::create_dir_all(&dir)?;
//! let shard = cache::write_shard(&dir, 0, &latents, None, data.labels.as_ref())?;
//! cache::write_manifest(&dir, &CacheManifest {
//!     format: CACHE_FORMAT.into(),
//!     autoencoder: "avg-pool".into(),
//!     autoencoder_fingerprint: "none".into(),
//!     codec: LatentCodec::preset("identity")?,
//!     image_size: [16, 16],
//!     latent_shape: [3, 4, 4],
//!     count: 6,
//!     num_classes: Some(2),
//!     flipped: false,
//!     channel_mean: vec![0.5; 3],
//!     channel_std: vec![0.3; 3],
//!     shards: vec![shard],
//! })?;
//!
//! let cache = Arc::new(LatentCache::open(&dir)?); // memory-mapped
//! let mut batches = CacheBatches::new(cache.clone(), 2, 7, false, BatchCursor::default())?;
//! let (first, after_first) = batches.next_batch()?;
//! assert_eq!(first.latents.size(), vec![2, 3, 4, 4]);
//! let (second, _) = batches.next_batch()?;
//! // resuming from the cursor saved after the first batch gives the same second batch
//! let mut resumed = CacheBatches::new(cache, 2, 7, false, after_first)?;
//! assert_eq!(resumed.next_batch()?.0.indices, second.indices);
//! std::fs::remove_dir_all(&root)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Depends on lpl-autoencoder (the codec in a cache manifest).

#![warn(missing_docs)]

pub mod cache;
pub mod emoji;
mod error;
pub mod folder;
pub mod idx;
pub mod prefetch;
pub mod preprocess;
pub mod shuffle;
pub mod source;

pub use cache::{CacheManifest, LatentBatch, LatentCache};
pub use emoji::NotoEmoji;
pub use error::{DataError, Result};
pub use folder::{FolderImages, ImageFolder, ReadOptions};
pub use idx::{FashionMnist, IdxArray, LabeledImages, Split, read_idx};
pub use prefetch::Prefetch;
pub use preprocess::{ImagePipeline, ResizeMode};
pub use shuffle::{BatchCursor, BatchStream, CacheBatches};
pub use source::{DatasetConfig, ImageSource};
