//! TF32 tensor-core math for f32 matmuls and convolutions on CUDA (Ampere and newer): about
//! 10 mantissa bits in the products, f32 accumulation. Process-wide, like
//! `torch.backends.cuda.matmul.fp32_precision = "tf32"`; no effect on CPU.

use crate::{Result, ffi};

/// Switches TF32 for CUDA matmuls and convolutions on or off (off: IEEE f32).
pub fn set(enabled: bool) -> Result<()> {
    ffi::tf32_set(enabled)
}

/// `(matmul, conv)`: whether each uses TF32.
pub fn get() -> Result<(bool, bool)> {
    ffi::tf32_get()
}
