//! # lpl-data
//!
//! Feeding the trainer: image sources (IDX files such as Fashion-MNIST; image folders and
//! the Noto emoji set to come), preprocessing (padding, value range), and (to come) a
//! sharded latent cache and deterministic, resumable shuffled batch streaming.
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

mod error;
pub mod folder;
pub mod idx;
pub mod preprocess;

pub use error::{DataError, Result};
pub use idx::{FashionMnist, IdxArray, LabeledImages, Split, read_idx};
