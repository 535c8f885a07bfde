//! Data throughput (`cargo xtask bench` runs it): cached-latent batches/s and latents/s
//! through the memory-mapped cache and the shuffled, flipping batch stream, at batch 256 for
//! 8x8x4 and 32x32x4 latents, read directly and through the prefetch thread; and image
//! decoding + preprocessing images/s for 64x64 RGBA PNGs (alpha over white, ADM crop to 32)
//! on the rayon pool. Writes `target/bench/data_throughput.json` and prints a table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::sync::Arc;
use std::time::Instant;

use lpl_autoencoder::LatentCodec;
use lpl_data::cache::{self, CACHE_FORMAT, CacheManifest};
use lpl_data::folder::{ReadOptions, decode_files};
use lpl_data::{BatchCursor, CacheBatches, LatentCache, ResizeMode};
use tch::{Device, Kind, Tensor};

fn build(dir: &std::path::Path, n: i64, shape: [i64; 3]) -> Arc<LatentCache> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let per_shard = 8192;
    let mut shards = Vec::new();
    for (i, start) in (0..n).step_by(per_shard).enumerate() {
        let len = (per_shard as i64).min(n - start);
        let z = Tensor::randn([len, shape[0], shape[1], shape[2]], (Kind::Float, Device::Cpu));
        let labels =
            Tensor::arange_start(start, start + len, (Kind::Int64, Device::Cpu)).remainder(10);
        shards.push(cache::write_shard(dir, i, &z, Some(&z.flip([3])), Some(&labels)).unwrap());
    }
    cache::write_manifest(
        dir,
        &CacheManifest {
            format: CACHE_FORMAT.into(),
            autoencoder: "bench".into(),
            autoencoder_fingerprint: "bench".into(),
            codec: LatentCodec::preset("identity").unwrap(),
            image_size: [shape[1] * 8, shape[2] * 8],
            latent_shape: shape,
            count: n,
            num_classes: Some(10),
            flipped: true,
            channel_mean: vec![0.0; shape[0] as usize],
            channel_std: vec![1.0; shape[0] as usize],
            shards,
        },
    )
    .unwrap();
    Arc::new(LatentCache::open(dir).unwrap())
}

/// Batches per second over `batches` batches (after 5 warm-up ones).
fn rate(mut next: impl FnMut() -> Tensor, batches: usize) -> f64 {
    for _ in 0..5 {
        let _ = std::hint::black_box(next());
    }
    let t = Instant::now();
    let mut checksum = 0f64;
    for _ in 0..batches {
        checksum += f64::try_from(next().get(0).get(0).get(0).get(0)).unwrap();
    }
    let _ = std::hint::black_box(checksum);
    batches as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let threads = rayon::current_num_threads();
    let root = std::env::temp_dir().join(format!("lpl-data-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let batch = 256usize;
    for (shape, n, batches) in [([4i64, 8, 8], 60_000i64, 400usize), ([4, 32, 32], 20_000, 150)] {
        let cache = build(&root.join(format!("{}x{}", shape[1], shape[2])), n, shape);
        let stream =
            || CacheBatches::new(cache.clone(), batch, 0, true, BatchCursor::default()).unwrap();
        let mut direct = stream();
        let direct_rate = rate(|| direct.next_batch().unwrap().0.latents, batches);
        let mut prefetched = stream().prefetch(4);
        let prefetch_rate = rate(|| prefetched.next().unwrap().unwrap().0.latents, batches);
        drop(prefetched);
        rows.push((
            format!("cache {}x{}x{} batch {batch}", shape[1], shape[2], shape[0]),
            direct_rate,
            prefetch_rate,
        ));
    }
    // 64x64 RGBA PNGs (the emoji format): smooth colour fields with a transparent border
    let png_dir = root.join("png");
    std::fs::create_dir_all(&png_dir).unwrap();
    let files: Vec<_> = (0..512u32)
        .map(|i| {
            let img = image::RgbaImage::from_fn(64, 64, |x, y| {
                let inside = (8..56).contains(&x) && (8..56).contains(&y);
                image::Rgba([
                    (x * 4 + i) as u8,
                    (y * 4) as u8,
                    (i * 7) as u8,
                    if inside { 255 } else { 0 },
                ])
            });
            let p = png_dir.join(format!("{i:04}.png"));
            img.save(&p).unwrap();
            p
        })
        .collect();
    let mut decode_rates = Vec::new();
    for (name, options) in [
        ("decode 64x64 PNG (RGB over white)", ReadOptions::new(3)),
        (
            "decode 64x64 PNG + ADM crop to 32",
            ReadOptions::new(3).resized(32, ResizeMode::AdmCenterCrop),
        ),
    ] {
        let _ = std::hint::black_box(decode_files(&files, &options).unwrap().images);
        let t = Instant::now();
        let reps = 4;
        for _ in 0..reps {
            let _ = std::hint::black_box(decode_files(&files, &options).unwrap().images);
        }
        decode_rates.push((name, (reps * files.len()) as f64 / t.elapsed().as_secs_f64()));
    }
    let _ = std::fs::remove_dir_all(&root);

    println!("\ndata throughput ({threads} rayon threads)\n");
    println!("| case | batches/s | latents/s | with prefetch: batches/s |");
    println!("|---|---:|---:|---:|");
    for (name, d, p) in &rows {
        println!("| {name} | {d:.0} | {:.0} | {p:.0} |", d * batch as f64);
    }
    println!("\n| case | images/s |\n|---|---:|");
    for (name, r) in &decode_rates {
        println!("| {name} | {r:.0} |");
    }
    let json = serde_json::json!({
        "threads": threads,
        "batch": batch,
        "cache": rows.iter().map(|(n, d, p)| serde_json::json!({"case": n, "batches_per_s": d, "latents_per_s": d * batch as f64, "prefetch_batches_per_s": p})).collect::<Vec<_>>(),
        "decode": decode_rates.iter().map(|(n, r)| serde_json::json!({"case": n, "images_per_s": r})).collect::<Vec<_>>(),
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("data_throughput.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
}
