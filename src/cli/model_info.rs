//! `lpl model-info --preset NAME`: parameter count and a short summary of a denoiser preset;
//! `lpl model-info --config RUN.toml`: the denoiser a run config builds (built-in or
//! registered), on its cache's latents.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use lpl_denoiser::{DIT_PRESETS, DitConfig, UNET_PRESETS, UNetConfig};
use lpl_trainer::run_config::RunConfig;

/// Arguments of `lpl model-info`.
#[derive(Args)]
pub struct ModelInfoArgs {
    /// A denoiser preset (`dit-b-2`, `dit-tiny`, `unet-tiny`, ...).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    preset: Option<String>,
    /// A run config: its `[model]` (any kind, registered ones too) built for its cache.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The model of a run config, built through the registry for the cache's latents.
fn run_config_model(path: &std::path::Path) -> Result<()> {
    let config = RunConfig::from_file(path)?;
    let cache = lpl_data::LatentCache::open(&config.data.cache)?;
    let shape = cache.manifest.latent_shape;
    let model = lpl_trainer::diffusion_training::build_model(
        &config,
        shape,
        cache.manifest.num_classes,
        tch::Device::Cpu,
    )?;
    let params = lpl_denoiser::parameter_count(model.var_store());
    println!("kind           {}", config.model.kind());
    println!("parameters     {} ({params})", millions(params));
    println!("input          {} x {} x {} latents", shape[0], shape[1], shape[2]);
    println!("classes        {}", model.num_classes().map_or("none".into(), |k| k.to_string()));
    Ok(())
}

fn millions(n: i64) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

/// Prints the summary.
pub fn run(args: ModelInfoArgs) -> Result<()> {
    let (Some(name), None) = (args.preset.as_deref(), &args.config) else {
        return match &args.config {
            Some(path) => run_config_model(path),
            None => bail!("give --preset or --config"),
        };
    };
    if name.starts_with("dit-") {
        let c = DitConfig::preset(name)?;
        let params = lpl_denoiser::dit::parameter_count_of(&c);
        let tokens = (c.sample_size / c.patch_size).pow(2);
        println!("preset         {name}");
        println!("architecture   DiT (adaLN-Zero), shared time/label embedder");
        println!("parameters     {} ({params})", millions(params));
        println!(
            "hidden size    {} ({} heads x {})",
            c.hidden_size(),
            c.num_attention_heads,
            c.attention_head_dim
        );
        println!("depth          {}", c.num_layers);
        println!(
            "input          {} x {} x {} latents, patch {} -> {tokens} tokens",
            c.in_channels, c.sample_size, c.sample_size, c.patch_size
        );
        println!(
            "classes        {} (+ null class, dropout {})",
            c.num_embeds_ada_norm.unwrap_or(0),
            c.class_dropout_prob
        );
        return Ok(());
    }
    if name.starts_with("unet-") {
        let c = UNetConfig::preset(name)?;
        let unet = lpl_denoiser::UNet::new(&c, tch::Device::Cpu, tch::Kind::Float)?;
        let params = lpl_denoiser::parameter_count(lpl_denoiser::Denoiser::var_store(&unet));
        println!("preset         {name}");
        println!("architecture   UNet2DModel ({} levels)", c.block_out_channels.len());
        println!("parameters     {} ({params})", millions(params));
        println!(
            "channels       {:?}, {} resnets per level",
            c.block_out_channels, c.layers_per_block
        );
        println!("attention      {:?}", c.down_block_types);
        println!("classes        {}", c.num_class_embeds.map_or(0, |n| n - 1));
        return Ok(());
    }
    bail!("unknown preset `{name}`; known: {}, {}", DIT_PRESETS.join(", "), UNET_PRESETS.join(", "))
}
