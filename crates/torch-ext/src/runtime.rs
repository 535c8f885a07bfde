//! What the linked libtorch runs on, for provenance records and `lpl doctor`: results of the
//! same computation can differ in their last bits between machines, and these say why.

use crate::{Result, ffi};

/// The CPU kernels ATen dispatches to: `DEFAULT`, `AVX2`, `AVX512` (the machine's best, or
/// what `ATEN_CPU_CAPABILITY` asks for).
pub fn cpu_capability() -> Result<String> {
    ffi::runtime_info(0)
}

/// The version of MKL linked into libtorch (empty without MKL). MKL's vector maths (`sqrt`,
/// `exp`, ... on CPU tensors) dispatches on the CPU by itself (`MKL_ENABLE_INSTRUCTIONS`),
/// independently of [`cpu_capability`], and is within 1 ulp but not correctly rounded.
pub fn mkl_version() -> Result<String> {
    ffi::runtime_info(1)
}
