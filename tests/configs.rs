//! Every shipped config parses and validates as the kind its name says (`ae-*`: autoencoder
//! training, `cache-*`: latent cache, `ablate-*`: ablation, other `*.toml`: a training run),
//! and an ablation sweep resolves each LPL variant to a valid loss config.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use lpl::ablation::AblationConfig;
use lpl::trainer::ae_training::AeTrainConfig;
use lpl::trainer::cache_building::CacheConfig;
use lpl::trainer::run_config::RunConfig;

fn configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            configs(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    configs(&root.join("configs"), &mut files);
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let result = if name.starts_with("ae-") {
            AeTrainConfig::from_file(path).map(|_| ()).map_err(|e| e.to_string())
        } else if name.starts_with("cache-") {
            CacheConfig::from_file(path).map(|_| ()).map_err(|e| e.to_string())
        } else if name.starts_with("ablate-") {
            AblationConfig::from_file(path)
                .map(|c| {
                    for v in &c.variants {
                        v.apply(&c.lpl).validate().unwrap();
                    }
                })
                .map_err(|e| e.to_string())
        } else {
            RunConfig::from_file(path).map(|_| ()).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            panic!("{}: {e}", path.display());
        }
    }
    let depth = AblationConfig::from_file(&root.join("configs/ablate-depth.toml")).unwrap();
    assert_eq!(depth.arms(), vec!["mse", "depth0", "depth1", "depth2", "lpl"]);
    assert_eq!(depth.variants[0].apply(&depth.lpl).depth, Some(0));
    // `preset = "paper"` resolves to the paper's table, the one the ablation ran with
    let default = AblationConfig::from_file(&root.join("configs/ablate-default.toml")).unwrap();
    assert_eq!(default.lpl, lpl::loss::LplConfig::preset("paper").unwrap());
}

/// `--quick` runs the first configured parameterisation and seed: eps for the default, v for
/// the emoji config (which has no eps), and what `--only` left when it was given.
#[test]
fn quick_runs_the_first_parameterization() {
    use lpl::schedulers::Parameterization;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |name: &str| AblationConfig::from_file(&root.join("configs").join(name)).unwrap();
    let default = load("ablate-default.toml").quick();
    assert_eq!((default.parameterizations, default.seeds), (vec![Parameterization::Eps], vec![0]));
    let emoji = load("ablate-emoji-taef2.toml").quick();
    assert_eq!(emoji.parameterizations, vec![Parameterization::V]);
    assert!(emoji.output_dir.ends_with("ablate-emoji-taef2-quick"));
    let flow = load("ablate-default.toml").only(&[Parameterization::Flow]).unwrap().quick();
    assert_eq!(flow.parameterizations, vec![Parameterization::Flow]);
}
