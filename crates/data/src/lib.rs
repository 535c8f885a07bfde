//! # lpl-data
//!
//! Feeding the trainer: image sources (IDX files such as Fashion-MNIST, flat image folders;
//! the Noto emoji set to come), preprocessing (padding, value range), the sharded latent
//! cache format ([`cache`]: manifest with codec and autoencoder fingerprint, atomic shards)
//! and deterministic, resumable shuffled batch streaming ([`shuffle`]).
//!
//! ```no_run
//! use lpl_data::{FashionMnist, Split};
//! let test = FashionMnist::load(None, Split::Test)?; // /usr/share/datasets/fashion-mnist
//! assert_eq!(test.images.size(), vec![10_000, 1, 28, 28]);
//! # Ok::<(), lpl_data::DataError>(())
//! ```
//!
//! Depends on lpl-autoencoder (the codec in a cache manifest).

#![warn(missing_docs)]

pub mod cache;
mod error;
pub mod folder;
pub mod idx;
pub mod preprocess;
pub mod shuffle;

pub use cache::{CacheManifest, LatentCache};
pub use error::{DataError, Result};
pub use idx::{FashionMnist, IdxArray, LabeledImages, Split, read_idx};
pub use shuffle::{BatchCursor, BatchStream};
