//! A tiny grey autoencoder (random weights) and a latent cache of `n` random 16x16 images
//! in 3 classes: what the CLI tests train on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl::autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig, checkpoint};
use lpl::trainer::cache_building::{CacheOptions, build_cache};
use tch::{Device, Kind, Tensor};

/// Writes `dir/ae.safetensors` and `dir/cache` (`n` images, flipped copies when `flip`);
/// returns their paths.
pub fn setup(dir: &Path, n: i64, flip: bool) -> (PathBuf, PathBuf) {
    tch::manual_seed(0);
    let config = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 8, 8],
        norm_num_groups: 4,
        scaling_factor: 1.0,
        ..AutoencoderKlConfig::default()
    };
    let mut ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    let ae_path = dir.join("ae.safetensors");
    checkpoint::save_kl(&ae, &ae_path, &BTreeMap::new()).unwrap();
    ae.set_requires_grad(false);
    let images = (Tensor::rand([n, 1, 4, 4], (Kind::Float, Device::Cpu)).upsample_bilinear2d(
        [16, 16],
        false,
        None,
        None,
    ) * 255.0)
        .to_kind(Kind::Uint8);
    let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
    let options = CacheOptions {
        pad_to: None,
        shard_size: 64,
        batch: 32,
        flip,
        num_classes: Some(3),
        autoencoder_name: "test".into(),
    };
    let cache = dir.join("cache");
    build_cache(&ae, &images, Some(&labels), &options, &cache, Device::Cpu).unwrap();
    (ae_path, cache)
}
