//! The subcommands of the `lpl` binary.

pub mod ae;
pub mod eval;
pub mod loss_probe;
pub mod model_info;
pub mod train;

use anyhow::{Result, bail};
use tch::Device;

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(name: &str) -> Result<Device> {
    Ok(match name {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device `{other}` (cpu, cuda, cuda:N, auto)"),
        },
    })
}
