//! Precision / recall / density / coverage equal a NumPy transcription of the reference
//! implementation (fixtures/make_prdc_fixture.py) exactly (counts of strict inequalities on
//! continuous features: no ties); a blurred copy of an image set has less high-frequency
//! power, a larger high-band spectrum error than a sharp copy, and the spectrum plot is a
//! PNG that shows it.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;

use lpl_metrics::{compare_spectra, prdc};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

#[test]
fn prdc_matches_the_numpy_reference() {
    let _rng = GlobalRng::lock();
    let g: HashMap<String, Tensor> = Tensor::read_safetensors(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prdc.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    for k in [3, 5] {
        let p = prdc(&g["real"], &g["fake"], k).unwrap();
        let want = |name: &str| f64::try_from(&g[&format!("k{k}_{name}")].get(0)).unwrap();
        for (name, got) in [
            ("precision", p.precision),
            ("recall", p.recall),
            ("density", p.density),
            ("coverage", p.coverage),
        ] {
            // 1e-12: counts / n; f64 distances (~1e-15 off) flip none on any CPU (p ~1e-10)
            assert!((got - want(name)).abs() < 1e-12, "k={k} {name}: {got} vs {}", want(name));
        }
    }
}

#[test]
fn blur_lowers_high_frequencies_and_the_plot_is_written() {
    let _rng = GlobalRng::seeded(1);
    // textured images: smooth shapes plus fine detail
    let coarse = Tensor::rand([64, 1, 8, 8], (Kind::Float, Device::Cpu)).upsample_bilinear2d(
        [32, 32],
        false,
        None,
        None,
    );
    let real = (coarse * 0.7 + Tensor::rand([64, 1, 32, 32], (Kind::Float, Device::Cpu)) * 0.3)
        .clamp(0.0, 1.0);
    let sharp = (&real + real.randn_like() * 0.01).clamp(0.0, 1.0);
    let k = Tensor::from_slice(&[0.25f32, 0.5, 0.25]);
    let blurred = real
        .conv2d(&k.view([1, 1, 1, 3]), None::<Tensor>, [1, 1], [0, 1], [1, 1], 1)
        .conv2d(&k.view([1, 1, 3, 1]), None::<Tensor>, [1, 1], [1, 0], [1, 1], 1);
    let (cs, cb) =
        (compare_spectra(&real, &sharp).unwrap(), compare_spectra(&real, &blurred).unwrap());
    let r = cb.real.len() - 1;
    assert!(cb.fake[r] < 0.5 * cb.real[r], "blur removes power at the highest radius");
    assert!(
        cb.high_band_error > 5.0 * cs.high_band_error,
        "{} vs {}",
        cb.high_band_error,
        cs.high_band_error
    );
    assert!(cb.high_band_error > cb.low_band_error);
    let path = std::env::temp_dir().join(format!("lpl-spectrum-{}.png", std::process::id()));
    cb.plot("real vs blurred", "blurred").save_png(&path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (720, 450));
    // both curves are drawn: pixels of the first (blue) and second (red) series colours
    let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    assert!(count([31, 119, 180]) > 200 && count([214, 39, 40]) > 200);
    if let Some(keep) = std::env::var_os("LPL_KEEP_PLOT") {
        std::fs::copy(&path, keep).unwrap();
    }
    std::fs::remove_file(&path).unwrap();
}
