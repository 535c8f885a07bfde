//! EfficientNet-Lite0 with its real ImageNet weights matches the reference implementation
//! (PyPI `efficientnet-lite-pytorch`; fixtures/make_effnet_fixture.py) to 1e-4 relative on
//! features and logits (f32, same kernels in a different graph). Fails, naming the asset, when the
//! converted weights are absent (`cargo xtask test` makes them).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use lpl_metrics::effnet::{EfficientNetLite0, preprocess};
use lpl_test_assets::Asset;
use tch::{Device, Kind, Tensor};

fn weights() -> PathBuf {
    Asset::EffNetWeights.require()
}

fn input() -> Tensor {
    let mut v = Vec::with_capacity(2 * 3 * 224 * 224);
    for b in 0..2 {
        for c in 0..3 {
            for h in 0..224 {
                for w in 0..224 {
                    let x = (0.05 * ((h + 1) * (c + 1)) as f64 + 0.07 * (w * (b + 1)) as f64).sin()
                        * 1.5;
                    v.push(x as f32);
                }
            }
        }
    }
    Tensor::from_slice(&v).view([2, 3, 224, 224])
}

#[test]
fn matches_the_reference_implementation() {
    let path = weights();
    let model = EfficientNetLite0::from_file(&path, Device::Cpu).unwrap();
    let golden: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/effnet_lite0.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    let x = input();
    let (feats, logits) = tch::no_grad(|| (model.features(&x), model.logits(&x)));
    let rel = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max() / b.abs().max()).unwrap();
    let (ef, el) = (rel(&feats, &golden["features"]), rel(&logits, &golden["logits"]));
    println!("EfficientNet-Lite0: features {ef:.1e}, logits {el:.1e} (relative to the max)");
    // 1e-4 of the max: ~50 convs, K <= 1152 at ~sqrt(K)*eps = 4e-6 each, any order, pooled: ~1e-5
    assert!(ef < 1e-4 && el < 1e-4);
    assert_eq!(feats.size(), vec![2, 1280]);
}

#[test]
fn preprocessing_maps_grey_to_rgb_at_224() {
    let grey = Tensor::full([2, 1, 32, 32], 0.5, (Kind::Float, Device::Cpu));
    let x = preprocess(&grey);
    assert_eq!(x.size(), vec![2, 3, 224, 224]);
    let v = f64::try_from(x.mean(Kind::Float)).unwrap();
    // 1e-6: resize of a constant is exact to 1 ulp of 0.5, times 255/128: <= 1.2e-7
    assert!((v - (127.5 - 127.0) / 128.0).abs() < 1e-6, "{v}");
}

/// scikit-image's chelsea.png (a tabby cat) and coffee.png (a cup of espresso), fetched by
/// `cargo xtask test` into `$LPL_HOME/assets`.
fn skimage_image(name: &str) -> Tensor {
    let path = Asset::SkimageImages.require().join(name);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let t = Tensor::from_slice(rgb.as_raw()).view([h as i64, w as i64, 3]).permute([2, 0, 1]);
    t.to_kind(Kind::Float).unsqueeze(0) / 255.0
}

#[test]
fn imagenet_classes_of_real_photos() {
    let path = weights();
    let (cat, coffee) = (skimage_image("chelsea.png"), skimage_image("coffee.png"));
    let model = EfficientNetLite0::from_file(&path, Device::Cpu).unwrap();
    let top1 = |x: &Tensor| {
        i64::try_from(tch::no_grad(|| model.logits(&preprocess(x))).argmax(1, false).get(0))
            .unwrap()
    };
    let (c, e) = (top1(&cat), top1(&coffee));
    println!("top-1: chelsea {c}, coffee {e}");
    assert!((281..=285).contains(&c), "chelsea.png: class {c}, expected a cat (281-285)");
    assert_eq!(e, 967, "coffee.png: expected espresso (967)");
}
