//! pytorch-fid's FID Inception-v3: with deterministic weights in pytorch-fid's layout (the
//! real file is not downloadable here; fixtures/make_inception_fixture.py builds the same
//! weights), pool3 features of the same images, through the same resize and scaling, match
//! pytorch-fid's `InceptionV3` to 1e-4 relative (f32; ~100 layers of different kernels).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use lpl_metrics::inception::FidInceptionV3;
use lpl_metrics::{FeatureExtractor, extract_features};
use tch::{Device, Kind, Tensor};

/// The fixture script's weights: entry k of the sorted state dict gets an integer hash of
/// (i, k) mapped to [-1, 1), then scaled per kind of tensor.
fn deterministic_weights(model: &FidInceptionV3) -> BTreeMap<String, Tensor> {
    let mut names: Vec<(String, Vec<i64>)> =
        model.var_store().variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: i64 = shape.iter().product();
            let m = 4_294_967_296i64;
            let u = (Tensor::arange(n, (Kind::Int64, Device::Cpu)) * 2_654_435_761i64
                + k as i64 * 40_503)
                .remainder(m);
            let u = (u.bitwise_xor_tensor(&u.floor_divide_scalar(32_768)) * 2_246_822_519i64)
                .remainder(m);
            let u = u.bitwise_xor_tensor(&u.floor_divide_scalar(8_192));
            let v = u.to_kind(Kind::Double) / m as f64 * 2.0 - 1.0;
            let v = if name.ends_with("conv.weight") {
                v * (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt()
            } else if name.ends_with("bn.weight") {
                v * 0.1 + 1.0
            } else if name.ends_with("bn.bias") || name.ends_with("running_mean") {
                v * 0.02
            } else if name.ends_with("running_var") {
                v.abs() * 0.05 + 1.0
            } else {
                panic!("unexpected weight {name}")
            };
            (name, v.to_kind(Kind::Float).view(shape.as_slice()))
        })
        .collect()
}

#[test]
fn matches_pytorch_fid_inception() {
    let model = FidInceptionV3::new(Device::Cpu);
    let weights = deterministic_weights(&model);
    assert_eq!(weights.len(), 470, "torchvision Inception3 without fc: 470 tensors");
    // through a file, as users load pytorch-fid's weights (plus an ignored classifier)
    let dir = std::env::temp_dir().join(format!("lpl-inception-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weights.safetensors");
    let mut entries: Vec<(String, Tensor)> = weights.into_iter().collect();
    entries.push(("fc.weight".into(), Tensor::zeros([1008, 2048], (Kind::Float, Device::Cpu))));
    lpl_tensor_io::save(&entries, &BTreeMap::new(), &path).unwrap();
    let model = FidInceptionV3::from_file(&path, Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let mut v = Vec::with_capacity(2 * 3 * 64 * 64);
    for b in 0..2 {
        for c in 0..3 {
            for h in 0..64 {
                for w in 0..64 {
                    let x = 0.5
                        + 0.5
                            * (0.11 * ((h + 1) * (c + 1)) as f64 + 0.05 * (w * (b + 1)) as f64)
                                .sin();
                    v.push(x as f32);
                }
            }
        }
    }
    let images = Tensor::from_slice(&v).view([2, 3, 64, 64]);
    let feats = extract_features(&model, &images, 1);
    let golden = Tensor::read_safetensors(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception_fid.safetensors"),
    )
    .unwrap()
    .into_iter()
    .find(|(k, _)| k == "features")
    .unwrap()
    .1;
    let rel = f64::try_from((&feats - &golden).abs().max() / golden.abs().max()).unwrap();
    println!("FID Inception pool3: max error {rel:.1e} relative to the max feature");
    assert_eq!(feats.size(), vec![2, 2048]);
    assert_eq!(model.metric_name(), "FID");
    // 1e-4 of the max: ~50 convs deep, K <= 4032 at ~sqrt(K)*eps = 8e-6 each, 8x8-pooled: ~1e-5
    assert!(rel < 1e-4, "{rel}");
    // and the two images differ (a collapsed network would pass trivially)
    let spread = f64::try_from((golden.get(0) - golden.get(1)).abs().max()).unwrap();
    assert!(spread > 0.1, "{spread}");
}

/// pytorch-fid's weight file layout (`pt_inception-2015-12-05-6726825d.pth`): the legacy
/// pre-zip `torch.save` format, 566 tensors (the FID Inception, its 1008-class `fc` and the
/// batch-norm step counters) as strided views into shared storages, written by torch 2.11's
/// own legacy writer (fixtures/make_inception_layout_fixture.py). It loads without pickle
/// execution; every weight the network uses equals torch's: the f64 sum of its values (the
/// same f32 values summed in f64: 1e-12 relative) and its first values exactly.
#[test]
fn loads_pytorch_fid_weight_file_layout() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = dir.join("pt_inception_layout.pth");
    assert!(!std::fs::read(&path).unwrap().starts_with(b"PK"), "the legacy format");
    let raw = lpl_tensor_io::read_tensors(&path).unwrap();
    assert_eq!(raw.len(), 566);
    assert_eq!(raw["fc.weight"].size(), [1008, 2048]);
    let model = FidInceptionV3::from_file(&path, Device::Cpu).unwrap();
    let check: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("pt_inception_layout_check.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let vars = model.var_store().variables();
    assert_eq!(vars.len(), 470);
    for (name, w) in &vars {
        let sum = f64::try_from(w.to_kind(Kind::Double).sum(Kind::Double)).unwrap();
        let expected = f64::try_from(&check[&format!("sum/{name}")].get(0)).unwrap();
        assert!((sum - expected).abs() <= 1e-12 * expected.abs().max(1.0), "{name}");
        let head = w.flatten(0, -1).narrow(0, 0, w.numel().min(8) as i64);
        assert!(head.equal(&check[&format!("head/{name}")]), "{name}");
    }
    // a truncated copy is an error naming the file and the storage
    let tmp = std::env::temp_dir().join(format!("lpl-inception-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cut = tmp.join("cut.pth");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = FidInceptionV3::from_file(&cut, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("cut.pth") && err.contains("storage"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
