//! A denoiser defined outside lpl's crates, used by every lpl command: implement
//! `Denoiser`, register a builder under a name, and write `[model] kind = "<name>"` (with the
//! model's own fields) in a run config. Here `lpl train` trains it with the latent
//! perceptual loss, `lpl sample` draws a grid from its EMA weights and `lpl eval` compares
//! its samples with real images, all through `lpl::cli` in this program (a user's own
//! `lpl` binary is the same two lines: register, then `lpl::cli::main()`).
//!
//! `cargo run --example custom_denoiser` (it builds a tiny autoencoder and latent cache in a
//! temporary directory; `tests/examples.rs` runs it and checks its outputs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl::autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig, checkpoint};
use lpl::denoiser::{Conditioning, Denoiser};
use lpl::trainer::cache_building::{CacheOptions, build_cache};
use lpl::trainer::evaluation::TrainedRun;
use lpl::trainer::registry::{BuildError, DenoiserSpec, register_denoiser};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A small convolutional denoiser: the time enters as an extra constant input channel.
pub struct ConvDenoiser {
    vs: nn::VarStore,
    layers: Vec<nn::Conv2D>,
    channels: i64,
}

impl ConvDenoiser {
    /// `channels` in and out, `width` hidden.
    pub fn new(channels: i64, width: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        let root = vs.root();
        let layers = vec![
            nn::conv2d(&root / "in", channels + 1, width, 3, cfg),
            nn::conv2d(&root / "mid", width, width, 3, cfg),
            nn::conv2d(&root / "out", width, channels, 3, cfg),
        ];
        Self { vs, layers, channels }
    }
}

impl Denoiser for ConvDenoiser {
    fn forward_t(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        _cond: &Conditioning,
        _train: bool,
    ) -> lpl::denoiser::Result<Tensor> {
        let (b, _, h, w) = x_t.size4()?;
        let time = (t / 1000.0).view([b, 1, 1, 1]).expand([b, 1, h, w], false);
        let mut x = Tensor::cat(&[x_t.shallow_clone(), time], 1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x);
            if i + 1 < self.layers.len() {
                x = x.silu();
            }
        }
        Ok(x)
    }
    fn in_channels(&self) -> i64 {
        self.channels
    }
    fn out_channels(&self) -> i64 {
        self.channels
    }
    fn num_classes(&self) -> Option<i64> {
        None
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

/// The builder lpl calls for `[model] kind = "conv"`: `width` from the table (default 16),
/// the channels from the cache.
fn build_conv(spec: &DenoiserSpec<'_>) -> Result<Box<dyn Denoiser>, BuildError> {
    let width = match spec.fields.get("width") {
        Some(w) => w.as_integer().ok_or("`model.width` must be an integer")?,
        None => 16,
    };
    if let Some(unknown) = spec.fields.keys().find(|k| *k != "width") {
        return Err(format!("unknown field `model.{unknown}` (conv takes `width`)").into());
    }
    Ok(Box::new(ConvDenoiser::new(spec.latent_shape[0], width)))
}

/// What [`run`] made.
pub struct Outputs {
    /// The run directory.
    pub run: PathBuf,
    /// The grid `lpl sample` wrote.
    pub grid: PathBuf,
    /// The spectrum plot `lpl eval` wrote.
    pub eval_plot: PathBuf,
    /// FD-EffNet of 16 samples against 16 cached training images (decoded), when the
    /// EfficientNet-Lite0 weights are present.
    pub fd: Option<f64>,
}

/// Builds a tiny autoencoder and cache under `dir`, registers `conv`, trains it for `steps`
/// with MSE + LPL (`paper` preset, every sample kept) by `lpl train`, then samples and
/// evaluates it by `lpl sample` and `lpl eval`.
pub fn run(dir: &Path, steps: usize) -> Result<Outputs, Box<dyn std::error::Error>> {
    register_denoiser("conv", build_conv)?;
    std::fs::create_dir_all(dir)?;
    tch::manual_seed(0);
    let ae_config = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 8],
        norm_num_groups: 4,
        scaling_factor: 1.0,
        ..AutoencoderKlConfig::default()
    };
    let mut ae = AutoencoderKl::new(&ae_config, Device::Cpu, Kind::Float)?;
    let ae_path: PathBuf = dir.join("ae.safetensors");
    checkpoint::save_kl(&ae, &ae_path, &BTreeMap::new())?;
    ae.set_requires_grad(false);
    let images =
        (Tensor::rand([32, 1, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
    let options = CacheOptions {
        pad_to: None,
        shard_size: 32,
        batch: 32,
        flip: false,
        num_classes: None,
        autoencoder_name: ae_path.display().to_string(),
    };
    let cache = dir.join("cache");
    build_cache(&ae, &images, None, &options, &cache, Device::Cpu)?;
    let run_dir = dir.join("run");
    let config = dir.join("custom_denoiser.toml");
    std::fs::write(
        &config,
        format!(
            r#"
output_dir = "{out}"
autoencoder = "{ae}"
[data]
cache = "{cache}"
[model]
kind = "conv"
width = 16
[diffusion]
schedule = "sd15"
parameterization = "eps"
[train]
steps = {steps}
batch_size = 8
log_every = 1
[loss.lpl]
preset = "paper"
gate = {{ kind = "all" }}
"#,
            out = run_dir.display(),
            ae = ae_path.display(),
            cache = cache.display(),
        ),
    )?;
    let arg = |p: &Path| p.display().to_string();
    lpl::cli::run_from(["lpl", "train", "--config", &arg(&config), "--device", "cpu"])?;
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
    let eval_plot = dir.join("spectrum.png");
    let fd = if lpl::trainer::evaluation::default_effnet_weights().is_some_and(|p| p.is_file()) {
        lpl::cli::run_from([
            "lpl",
            "eval",
            "--run",
            &arg(&run_dir),
            "--real",
            &arg(&cache),
            "--count",
            "16",
            "--steps",
            "10",
            "--plot",
            &arg(&eval_plot),
            "--device",
            "cpu",
        ])?;
        // the same comparison through the library, for its number
        let trained = TrainedRun::open(&run_dir, Device::Cpu)?;
        let sample = lpl::trainer::run_config::SampleConfig {
            sampler: lpl::schedulers::SamplerConfig::new(lpl::schedulers::SamplerKind::Ddim, 10),
            guidance: Default::default(),
            count: 16,
            seed: 0,
            every: 0,
        };
        let fake = trained.sample_images(&sample, Device::Cpu)?;
        let cache = lpl::data::LatentCache::open(&cache)?;
        let real_latents = cache.gather(&(0..16).collect::<Vec<_>>(), &[])?.latents;
        let real =
            lpl::trainer::sampling::decode(trained.ae.as_ref(), &trained.codec, &real_latents)?;
        let weights = lpl::trainer::evaluation::default_effnet_weights().ok_or("no weights")?;
        let net = lpl::metrics::EfficientNetLite0::from_file(&weights, Device::Cpu)?;
        Some(lpl::metrics::compare_images(&net, &real, &fake)?.0.fd)
    } else {
        None
    };
    Ok(Outputs { run: run_dir, grid, eval_plot, fd })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("lpl-custom-denoiser-{}", std::process::id()));
    let out = run(&dir, 10)?;
    println!("trained the custom denoiser with LPL, grid {}", out.grid.display());
    if let Some(fd) = out.fd {
        println!("FD-EffNet of 16 samples: {fd:.2}");
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
