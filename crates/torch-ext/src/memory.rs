//! Allocated bytes of a CUDA device as the caching allocator counts them (the figures of
//! `torch.cuda.memory_allocated` / `max_memory_allocated`, which tch does not expose).

use tch::Device;

use crate::{Result, TorchExtError, ffi};

/// Current and peak allocated bytes of a CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes held by live tensors now.
    pub current: u64,
    /// The most held at once since the last [`reset_peak`].
    pub peak: u64,
}

fn index(device: Device) -> Result<i32> {
    match device {
        Device::Cuda(i) => Ok(i as i32),
        other => Err(TorchExtError {
            call: "device_memory",
            message: format!("allocator statistics exist for CUDA devices only, not {other:?}"),
        }),
    }
}

/// The allocator's figures for `device` (CUDA only).
pub fn stats(device: Device) -> Result<DeviceMemory> {
    let (current, peak) = ffi::device_memory(index(device)?)?;
    Ok(DeviceMemory { current: current.max(0) as u64, peak: peak.max(0) as u64 })
}

/// Starts a new peak measurement on `device` (CUDA only).
pub fn reset_peak(device: Device) -> Result<()> {
    ffi::device_memory_reset_peak(index(device)?)
}
