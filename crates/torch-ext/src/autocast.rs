//! Autocast regions: inside one, libtorch runs matmuls, convolutions and linear layers in the
//! region's dtype and keeps precision-sensitive ops (softmax, norms, losses) in f32, as
//! `torch.autocast(device_type, dtype)` does; parameters stay f32 (the master weights) and
//! their gradients come back in f32.
//!
//! Regions are thread-local, nest, and restore the previous state when dropped:
//!
//! ```no_run
//! use lpl_torch_ext::{Autocast, AutocastDtype};
//! # fn main() -> lpl_torch_ext::Result<()> {
//! let device = tch::Device::cuda_if_available();
//! let _bf16 = Autocast::enter(device, AutocastDtype::BFloat16)?;
//! // ... forward passes in bf16 ...
//! {
//!     let _f32 = Autocast::disable(device)?; // e.g. the LPL decoder branch
//! }
//! # Ok(()) }
//! ```

use tch::{Device, Kind};

use crate::{Result, ffi};

/// The reduced dtype of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    /// bfloat16: f32's exponent range, no loss scaling needed.
    BFloat16,
    /// float16: needs loss scaling for training (not provided by lpl).
    Float16,
}

impl AutocastDtype {
    /// The tch kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::BFloat16 => Kind::BFloat16,
            Self::Float16 => Kind::Half,
        }
    }

    /// `c10::ScalarType` code.
    fn code(self) -> i32 {
        match self {
            Self::BFloat16 => 15,
            Self::Float16 => 5,
        }
    }
}

impl AutocastDtype {
    /// `bf16` or `fp16`, as in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::BFloat16 => "bf16",
            Self::Float16 => "fp16",
        }
    }
}

impl std::fmt::Display for AutocastDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn device_code(device: Device) -> i32 {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

/// An autocast region on one device type; dropping it restores the previous state.
#[must_use = "the region ends when this guard is dropped"]
#[derive(Debug)]
pub struct Autocast {
    device: i32,
    previous: (bool, i32),
}

impl Autocast {
    /// Enables autocast to `dtype` on `device`'s type (CPU or CUDA).
    pub fn enter(device: Device, dtype: AutocastDtype) -> Result<Self> {
        Self::set(device, true, dtype.code())
    }

    /// Disables autocast on `device`'s type inside an enclosing region (ops run in their
    /// inputs' dtype: cast inputs to f32 for an f32 sub-computation).
    pub fn disable(device: Device) -> Result<Self> {
        let code = device_code(device);
        let (_, dtype) = ffi::autocast_get(code)?;
        Self::set(device, false, dtype)
    }

    fn set(device: Device, enabled: bool, dtype: i32) -> Result<Self> {
        let code = device_code(device);
        let previous = ffi::autocast_get(code)?;
        ffi::autocast_set(code, enabled, dtype)?;
        ffi::autocast_increment_nesting();
        Ok(Self { device: code, previous })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        ffi::autocast_decrement_nesting();
        // restoring a state that was readable a moment ago; a failure here would leave the
        // region's state on, and there is no caller to report it to
        if let Err(e) = ffi::autocast_set(self.device, self.previous.0, self.previous.1) {
            eprintln!("warning: restoring the autocast state failed: {e}");
        }
    }
}

/// Whether autocast is on for `device`'s type, and its dtype's tch kind.
pub fn state(device: Device) -> Result<(bool, Option<Kind>)> {
    let (enabled, code) = ffi::autocast_get(device_code(device))?;
    let kind = match code {
        15 => Some(Kind::BFloat16),
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        _ => None,
    };
    Ok((enabled, kind))
}

/// Runs `f` in an autocast region when `dtype` is given, else as is.
pub fn maybe<T>(device: Device, dtype: Option<AutocastDtype>, f: impl FnOnce() -> T) -> Result<T> {
    let _region = dtype.map(|d| Autocast::enter(device, d)).transpose()?;
    Ok(f())
}
