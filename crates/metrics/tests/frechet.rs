//! Frechet distance equals pytorch-fid's `calculate_frechet_distance` (scipy sqrtm) on fixed
//! statistics of dims 64 and 2048, full rank and rank deficient, to relative error < 1e-6
//! (fixtures/make_fixtures.py); streaming statistics equal numpy's mean and covariance.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;

use lpl_metrics::{GaussianStats, StatsAccumulator, frechet_distance};
use tch::{Device, Kind, Tensor};

fn golden() -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frechet.safetensors");
    Tensor::read_safetensors(p)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_kind(Kind::Double)))
        .collect()
}

fn stats(g: &HashMap<String, Tensor>, case: &str, side: &str) -> GaussianStats {
    let a = &g[&format!("{case}/a{side}")];
    let k = a.size()[1] as f64;
    let sigma = a.matmul(&a.transpose(0, 1)) / k + g[&format!("{case}/d{side}")].diag(0);
    GaussianStats { mu: g[&format!("{case}/mu{side}")].shallow_clone(), sigma, count: 0 }
}

#[test]
fn matches_pytorch_fid() {
    let g = golden();
    for case in ["d64_full", "d64_deficient", "d2048_full", "d2048_deficient"] {
        let fd = frechet_distance(&stats(&g, case, "1"), &stats(&g, case, "2")).unwrap();
        let expected = f64::try_from(g[&format!("{case}/fd")].get(0)).unwrap();
        let rel = ((fd - expected) / expected).abs();
        println!("{case}: ours {fd:.10} pytorch-fid {expected:.10} (relative error {rel:.1e})");
        // 1e-6 rel: f64; scipy's stored sqrtm bias <= 1e-7, LAPACK paths ~1e-13, a stray eig 3e-8
        assert!(rel < 1e-6, "{case}: {fd} vs {expected}");
    }
}

#[test]
fn identical_statistics_are_at_distance_zero_and_files_round_trip() {
    let g = golden();
    let s = stats(&g, "d64_deficient", "1");
    // 1e-5: f64 eigh noise (~5e-13, any LAPACK) sits under the 2e-12 cut; one stray adds 3e-6
    assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-5);
    let path = std::env::temp_dir().join(format!("lpl-stats-{}.safetensors", std::process::id()));
    let with_count = GaussianStats { count: 17, ..s };
    with_count.save(&path).unwrap();
    let back = GaussianStats::load(&path).unwrap();
    assert_eq!(back.count, 17);
    assert!(back.sigma.equal(&with_count.sigma) && back.mu.equal(&with_count.mu));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn streaming_statistics_equal_the_batch_formulas() {
    let f = Tensor::randn([300, 5], (Kind::Double, Device::Cpu)) * 3.0 + 1.0;
    let mut acc = StatsAccumulator::new(5);
    for chunk in f.split(64, 0) {
        acc.add(&chunk).unwrap();
    }
    let s = acc.finish().unwrap();
    let mu = f.mean_dim(0, false, Kind::Double);
    let centered = &f - &mu;
    let cov = centered.transpose(0, 1).matmul(&centered) / 299.0;
    // 1e-12: f64 sums of 300 values |x| < 16 in any order, / 300: <= n*eps*mean|x| ~ 2e-13
    assert!(f64::try_from((s.mu - mu).abs().max()).unwrap() < 1e-12);
    // 1e-10: sum x x^T - n mu mu^T cancels ~3000 down to ~9: <= n*eps*3000/299 ~ 7e-13
    assert!(f64::try_from((s.sigma - cov).abs().max()).unwrap() < 1e-10);
    assert!(acc.add(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu))).is_err());
}
