//! # lpl-data
//!
//! Feeding the trainer: image sources (IDX files such as Fashion-MNIST, image folders, the
//! Noto emoji set), preprocessing (resize, centre crop, padding, flips, value range per the
//! `LatentCodec`), a sharded, memory-mapped latent cache whose manifest records the codec and
//! the autoencoder's identity, and deterministic, resumable shuffled batch streaming.
//!
//! Depends on lpl-autoencoder (the codec in a cache manifest).
