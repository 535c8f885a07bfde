//! The latent cache end to end: encoding with a fixed autoencoder then reading back (memory
//! mapped) gives the same tensors, flipped latents are the flipped images' latents, the
//! shuffled stream is a deterministic permutation per epoch and resumes exactly, an
//! interrupted build resumes, and damaged shards (a flipped bit, truncation, garbage) or a
//! different autoencoder are clear errors.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;

use lpl_autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig};
use lpl_data::{BatchCursor, CacheBatches, LatentCache, preprocess};
use lpl_torch_ext::GlobalRng;
use lpl_trainer::cache_building::{CacheOptions, build_cache};
use tch::{Device, Kind, Tensor};

fn tiny_ae() -> AutoencoderKl {
    tch::manual_seed(3);
    let config = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 8],
        norm_num_groups: 4,
        scaling_factor: 0.5,
        ..AutoencoderKlConfig::default()
    };
    let mut ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    ae.set_requires_grad(false);
    ae
}

fn encode(ae: &AutoencoderKl, images: &Tensor) -> Tensor {
    let codec = ae.codec();
    let x = codec.pixels_to_input(&preprocess::to_unit_range(images).unwrap());
    tch::no_grad(|| codec.to_model(&ae.encode(&x).unwrap().mode()).unwrap())
}

#[test]
fn round_trip_order_resume_and_damage() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ae = tiny_ae();
    let images =
        (Tensor::rand([50, 1, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
    let labels = Tensor::arange(50, (Kind::Int64, Device::Cpu)).remainder(5);
    let options = CacheOptions {
        pad_to: None,
        shard_size: 16,
        batch: 7,
        flip: true,
        num_classes: Some(5),
        autoencoder_name: "tiny".into(),
    };
    let manifest = build_cache(&ae, &images, Some(&labels), &options, &dir, Device::Cpu).unwrap();
    assert_eq!(manifest.shards.len(), 4); // 16 + 16 + 16 + 2
    let cache = LatentCache::open(&dir).unwrap();
    let all = cache.read_all().unwrap();
    let expected = encode(&ae, &images);
    let err = f64::try_from((&all.latents - &expected).abs().max()).unwrap();
    // 1e-5: one CPU; batch 7 vs 50 may reorder sums: sqrt(12 layers) x sqrt(72)*eps x |z| ~ 4e-6
    assert!(err < 1e-5, "round trip error {err}"); // batch 7 vs 50: only float reassociation
    assert!(all.labels.as_ref().unwrap().equal(&labels));
    let flipped = cache.read_all_flipped().unwrap();
    let err =
        f64::try_from((&flipped.latents - encode(&ae, &images.flip([3]))).abs().max()).unwrap();
    assert!(err < 1e-5, "flipped round trip error {err}"); // as above
    let fingerprint = ae.fingerprint().unwrap();
    cache.check_autoencoder(&fingerprint, ae.codec()).unwrap();
    let msg = cache.check_autoencoder("0123", ae.codec()).unwrap_err().to_string();
    assert!(msg.contains("different autoencoder") && msg.contains("manifest.json"), "{msg}");

    // the stream: each epoch (6 batches of 8, 2 dropped) a permutation prefix, fixed by the seed
    let cache = Arc::new(cache);
    let epoch = |seed: u64, cursor: BatchCursor| {
        let mut s = CacheBatches::new(cache.clone(), 8, seed, true, cursor).unwrap();
        (0..6).map(|_| s.next_batch().unwrap().0.indices).collect::<Vec<_>>()
    };
    let e0 = epoch(1, BatchCursor::default());
    let e1 = epoch(1, BatchCursor { epoch: 1, position: 0 });
    let seen: BTreeSet<i64> = e0.iter().flatten().copied().collect();
    assert_eq!(seen.len(), 48, "no sample twice in an epoch");
    assert_eq!(e0, epoch(1, BatchCursor::default()));
    assert_ne!(e0, e1);
    assert_ne!(e0, epoch(2, BatchCursor::default()));
    // resuming at position k (after 3 batches) continues with the same batches and flips
    let mut full = CacheBatches::new(cache.clone(), 8, 1, true, BatchCursor::default()).unwrap();
    let seq: Vec<_> = (0..10).map(|_| full.next_batch().unwrap()).collect();
    let mut resumed = CacheBatches::new(cache.clone(), 8, 1, true, seq[2].1).unwrap().prefetch(2);
    for (batch, cursor) in &seq[3..] {
        let (b, c) = resumed.next().unwrap().unwrap();
        assert_eq!((&b.indices, c), (&batch.indices, *cursor));
        assert!(b.latents.equal(&batch.latents), "same latents, same flips");
    }
    // flips happen and come from the flipped latents
    let first = &seq[0].0;
    let plain = cache.gather(&first.indices, &[]).unwrap();
    let n_flipped = (0..8).filter(|&i| !first.latents.get(i).equal(&plain.latents.get(i))).count();
    assert!((1..8).contains(&n_flipped), "{n_flipped} of 8 flipped");
    drop(resumed);

    // an interrupted build (no manifest, a shard lost) resumes: only the lost shard is redone
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::remove_file(dir.join("shard-00002.safetensors")).unwrap();
    let before =
        std::fs::metadata(dir.join("shard-00000.safetensors")).unwrap().modified().unwrap();
    let again = build_cache(&ae, &images, Some(&labels), &options, &dir, Device::Cpu).unwrap();
    assert_eq!((&again.shards, again.count), (&manifest.shards, manifest.count));
    for (a, b) in again.channel_std.iter().zip(&manifest.channel_std) {
        // 1e-12: f64 statistics of bit-identical latents in one process: equal, 1e-12 is slack
        assert!((a - b).abs() < 1e-12, "statistics of the same latents: {a} vs {b}");
    }
    let after = std::fs::metadata(dir.join("shard-00000.safetensors")).unwrap().modified().unwrap();
    assert_eq!(before, after, "complete shards are kept");

    // one flipped bit in a shard's data is caught on open (its recorded SHA-256), naming it
    let shard = dir.join("shard-00001.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() - 50; // inside the last tensor's data
    flipped[at] ^= 0x10;
    std::fs::write(&shard, &flipped).unwrap();
    let msg = LatentCache::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.safetensors") && msg.contains("damaged"), "{msg}");
    std::fs::write(&shard, &bytes).unwrap();
    LatentCache::open(&dir).unwrap();
    // a truncated shard is an error naming it
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    let msg = LatentCache::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.safetensors") && msg.contains("rebuild"), "{msg}");
    // garbage in place of a shard, likewise
    std::fs::write(&shard, b"not a safetensors file at all").unwrap();
    let msg = LatentCache::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.safetensors"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
