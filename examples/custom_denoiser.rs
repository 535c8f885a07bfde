//! A denoiser defined outside lpl's crates, trained by lpl's trainer with the latent
//! perceptual loss on: implement `Denoiser`, then call `train_model`.
//!
//! `cargo run --example custom_denoiser` (it builds a tiny autoencoder and latent cache in a
//! temporary directory; `tests/examples.rs` runs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl::autoencoder::{Autoencoder, AutoencoderKl, AutoencoderKlConfig, checkpoint};
use lpl::denoiser::{Conditioning, Denoiser};
use lpl::trainer::cache_building::{CacheOptions, build_cache};
use lpl::trainer::diffusion_training::{Start, TrainOutcome, train_model};
use lpl::trainer::run_config::RunConfig;
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

/// Builds a tiny autoencoder and cache under `dir`, then trains `ConvDenoiser` for `steps`
/// with MSE + LPL (`paper` preset, every sample kept).
pub fn run(dir: &Path, steps: usize) -> Result<TrainOutcome, Box<dyn std::error::Error>> {
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
        autoencoder_name: "example".into(),
    };
    let cache = dir.join("cache");
    build_cache(&ae, &images, None, &options, &cache, Device::Cpu)?;
    let config = RunConfig::from_toml(
        &format!(
            r#"
output_dir = "{out}"
autoencoder = "{ae}"
[data]
cache = "{cache}"
[model]
preset = "dit-tiny"  # not used: the model is ours
[diffusion]
schedule = "sd15"
parameterization = "eps"
[train]
steps = {steps}
batch_size = 8
log_every = 1
[loss.lpl]
norm = "pred_stats"
mask = true
mask_source = "target"
layer_weights = "inverse_upscale"
spatial_reduce = "masked_mean"
distance = "l2"
gate = {{ kind = "all" }}
batch_reduce = "kept"
post_quant_conv = true
"#,
            out = dir.join("run").display(),
            ae = ae_path.display(),
            cache = cache.display(),
        ),
        Path::new("custom_denoiser.toml"),
    )?;
    let model = ConvDenoiser::new(4, 16);
    Ok(train_model(&config, &model, Start::Fresh, Device::Cpu)?)
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("lpl-custom-denoiser-{}", std::process::id()));
    let outcome = run(&dir, 10)?;
    println!(
        "trained a custom denoiser for {} steps with LPL: last loss {:.4}",
        outcome.step, outcome.last_loss
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
