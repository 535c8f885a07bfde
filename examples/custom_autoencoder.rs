//! An autoencoder defined outside lpl's crates, used wherever lpl takes an autoencoder
//! path: implement `Autoencoder` (with `named_weights`, which gives it a real fingerprint),
//! register an opener for its files, and name its file in configs and commands. Here a
//! latent cache is encoded with it, a DiT is trained with the latent perceptual loss through
//! its decoder (`lpl train`), and `lpl sample` decodes samples through it.
//!
//! `cargo run --example custom_autoencoder` (everything in a temporary directory;
//! `tests/examples.rs` runs it and checks its outputs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl::autoencoder::{
    Autoencoder, FeatureLayer, InputRange, LatentCodec, LatentDistribution, register_format,
};
use lpl::trainer::cache_building::{CacheOptions, build_cache};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A 2x autoencoder for 1-channel images: a strided convolution to 4 latent channels, and a
/// decoder with a "mid" convolution and one upsampling stage (the two LPL feature layers).
pub struct TinyAe {
    vs: nn::VarStore,
    encoder: nn::Conv2D,
    mid: nn::Conv2D,
    up: nn::Conv2D,
    out: nn::Conv2D,
    codec: LatentCodec,
}

/// The file name ending this example registers (safetensors inside).
pub const SUFFIX: &str = ".tinyae.safetensors";

impl TinyAe {
    /// Random weights from `seed`, frozen.
    pub fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let pad = nn::ConvConfig { padding: 1, ..Default::default() };
        let stride = nn::ConvConfig { padding: 1, stride: 2, ..Default::default() };
        let encoder = nn::conv2d(&root / "encoder", 1, 4, 3, stride);
        let mid = nn::conv2d(&root / "mid", 4, 8, 3, pad);
        let up = nn::conv2d(&root / "up", 8, 8, 3, pad);
        let out = nn::conv2d(&root / "out", 8, 1, 3, pad);
        vs.freeze();
        let codec = LatentCodec::affine(InputRange::MinusOneToOne, 1.0, 0.0);
        Self { vs, encoder, mid, up, out, codec }
    }

    /// Writes its weights (safetensors) at `path`.
    pub fn save(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        Ok(lpl::tensor_io::save(&self.named_weights(), &BTreeMap::new(), path)?)
    }

    /// Reads weights written by [`Self::save`].
    pub fn open(path: &Path) -> lpl::autoencoder::Result<Self> {
        let ae = Self::new(0);
        lpl::tensor_io::load_file(&ae.vs, path)?;
        Ok(ae)
    }
}

impl Autoencoder for TinyAe {
    fn image_channels(&self) -> i64 {
        1
    }
    fn latent_channels(&self) -> i64 {
        4
    }
    fn downsample_factor(&self) -> i64 {
        2
    }
    fn codec(&self) -> &LatentCodec {
        &self.codec
    }
    fn encode(&self, images: &Tensor) -> lpl::autoencoder::Result<LatentDistribution> {
        Ok(LatentDistribution { mean: self.encoder.forward(images), logvar: None })
    }
    fn decode(&self, z: &Tensor) -> lpl::autoencoder::Result<Tensor> {
        let features = self.decode_features(z, 1, true)?;
        Ok(self.out.forward(&features[1].silu()).tanh())
    }
    fn feature_layers(&self) -> Vec<FeatureLayer> {
        vec![
            FeatureLayer { name: "mid".into(), channels: 8, upscale: 1 },
            FeatureLayer { name: "up".into(), channels: 8, upscale: 2 },
        ]
    }
    fn decode_features(
        &self,
        z: &Tensor,
        depth: usize,
        _post_quant_conv: bool,
    ) -> lpl::autoencoder::Result<Vec<Tensor>> {
        let mid = self.mid.forward(z).silu();
        let mut out = vec![mid.shallow_clone()];
        if depth >= 1 {
            let (_, _, h, w) = mid.size4()?;
            out.push(self.up.forward(&mid.upsample_nearest2d([2 * h, 2 * w], None, None)));
        }
        Ok(out)
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }
    fn named_weights(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }
}

/// Registers the `.tinyae.safetensors` format: every `lpl_autoencoder::open`, so every
/// command and config that takes an autoencoder path, opens these files.
pub fn register() {
    register_format("tinyae", |path, _device, _kind| {
        path.to_string_lossy()
            .ends_with(SUFFIX)
            .then(|| TinyAe::open(path).map(|ae| Box::new(ae) as Box<dyn Autoencoder>))
    });
}

/// What [`run`] made.
pub struct Outputs {
    /// The run directory.
    pub run: PathBuf,
    /// The grid `lpl sample` decoded through the custom autoencoder.
    pub grid: PathBuf,
    /// The fingerprint of the autoencoder the cache was made with ...
    pub fingerprint: String,
    /// ... and that of one with other weights.
    pub other_fingerprint: String,
    /// The error training gave with the other autoencoder on the same cache.
    pub other_refused: String,
}

/// Encodes 64 smooth 16x16 images in 4 classes with a `TinyAe` saved at `dir/ae.tinyae.safetensors`,
/// trains `dit-tiny` for `steps` with LPL through its decoder, and samples a grid.
pub fn run(dir: &Path, steps: usize) -> Result<Outputs, Box<dyn std::error::Error>> {
    register();
    std::fs::create_dir_all(dir)?;
    let ae_path = dir.join(format!("ae{SUFFIX}"));
    let ae = TinyAe::new(1);
    ae.save(&ae_path)?;
    let other_path = dir.join(format!("other{SUFFIX}"));
    let other = TinyAe::new(2);
    other.save(&other_path)?;
    tch::manual_seed(0);
    let coarse = Tensor::rand([64, 1, 4, 4], (Kind::Float, Device::Cpu));
    let images =
        (coarse.upsample_bilinear2d([16, 16], false, None, None) * 255.0).to_kind(Kind::Uint8);
    let labels = Tensor::arange(64, (Kind::Int64, Device::Cpu)).remainder(4);
    let options = CacheOptions {
        pad_to: None,
        shard_size: 64,
        batch: 32,
        flip: false,
        num_classes: Some(4),
        autoencoder_name: ae_path.display().to_string(),
    };
    let cache = dir.join("cache");
    build_cache(&ae, &images, Some(&labels), &options, &cache, Device::Cpu)?;
    let run_dir = dir.join("run");
    let config = |out: &Path, ae: &Path| {
        format!(
            r#"
output_dir = "{out}"
autoencoder = "{ae}"
[data]
cache = "{cache}"
[model]
kind = "dit"
preset = "dit-tiny"
[diffusion]
schedule = "dit"
parameterization = "eps"
[train]
steps = {steps}
batch_size = 8
log_every = 1
[loss.lpl]
preset = "paper"
gate = {{ kind = "all" }}
"#,
            out = out.display(),
            ae = ae.display(),
            cache = cache.display(),
        )
    };
    let good = dir.join("run.toml");
    std::fs::write(&good, config(&run_dir, &ae_path))?;
    let bad = dir.join("other.toml");
    std::fs::write(&bad, config(&dir.join("other-run"), &other_path))?;
    let arg = |p: &Path| p.display().to_string();
    lpl::cli::run_from(["lpl", "train", "--config", &arg(&good), "--device", "cpu"])?;
    let other_refused =
        match lpl::cli::run_from(["lpl", "train", "--config", &arg(&bad), "--device", "cpu"]) {
            Ok(()) => return Err("a cache encoded by another autoencoder was accepted".into()),
            Err(e) => format!("{e:#}"),
        };
    let grid = dir.join("grid.png");
    lpl::cli::run_from([
        "lpl",
        "sample",
        "--run",
        &arg(&run_dir),
        "--out",
        &arg(&grid),
        "--count",
        "8",
        "--steps",
        "10",
        "--device",
        "cpu",
    ])?;
    Ok(Outputs {
        run: run_dir,
        grid,
        fingerprint: ae.fingerprint()?,
        other_fingerprint: other.fingerprint()?,
        other_refused,
    })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("lpl-custom-autoencoder-{}", std::process::id()));
    let out = run(&dir, 10)?;
    println!("trained with LPL through a custom autoencoder; grid {}", out.grid.display());
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
