//! `lpl model-info --preset NAME`: parameter count and a short summary of a denoiser preset.

use anyhow::{Result, bail};
use clap::Args;
use lpl_denoiser::{DIT_PRESETS, DitConfig, UNET_PRESETS, UNetConfig};

/// Arguments of `lpl model-info`.
#[derive(Args)]
pub struct ModelInfoArgs {
    /// A denoiser preset (`dit-b-2`, `dit-tiny`, `unet-tiny`, ...).
    #[arg(long)]
    preset: String,
}

fn millions(n: i64) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

/// Prints the summary.
pub fn run(args: ModelInfoArgs) -> Result<()> {
    let name = args.preset.as_str();
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
