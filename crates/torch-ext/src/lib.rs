//! What `tch` does not expose, through a small C++ shim (`src/shim.cpp`) compiled against the
//! headers of the libtorch that torch-sys links:
//!
//! - [`autocast`]: mixed-precision regions with a chosen dtype (tch's `autocast` is CUDA fp16
//!   only); bf16 on CUDA for training, bf16 on CPU for tests of the same code path;
//! - [`tf32`]: the TF32 switch of CUDA matmuls and convolutions
//!   (`torch.backends.cuda.matmul.fp32_precision`);
//! - [`memory`]: the device allocator's current and peak allocated bytes
//!   (`torch.cuda.max_memory_allocated`);
//! - [`multi_tensor`]: fused AdamW and `_foreach_*` operations over parameter lists (the
//!   optimiser, gradient clipping and EMA in a few kernel launches);
//! - [`attention`]: scaled dot-product attention that falls back to the math kernel where
//!   libtorch's fused CPU kernel refuses bf16 (a forced `ATEN_CPU_CAPABILITY`);
//! - [`runtime`]: ATen's CPU capability and MKL's version (provenance of results);
//! - [`distributed`]: libtorch's c10d (the engine of `torch.distributed`): the TCPStore
//!   rendezvous and the Gloo process group's collectives;
//! - [`global_rng`]: exclusive, reentrant use of libtorch's process-global generators
//!   ([`GlobalRng`]), so seeded sections stay reproducible beside other threads.
//!
//! Every shim call reports a libtorch exception as [`TorchExtError`], never as a crash.
#![allow(unsafe_code)] // the FFI boundary of this crate, and only this crate

pub mod attention;
pub mod autocast;
pub mod distributed;
pub mod global_rng;
pub mod memory;
pub mod multi_tensor;
pub mod profiler;
pub mod runtime;
pub mod tf32;

mod ffi;

pub use autocast::{Autocast, AutocastDtype};
pub use global_rng::GlobalRng;

/// A libtorch call of the shim failed.
#[derive(Debug, thiserror::Error)]
#[error("libtorch ({call}): {message}")]
pub struct TorchExtError {
    /// The shim function.
    pub call: &'static str,
    /// libtorch's exception message.
    pub message: String,
}

/// `Result` of this crate.
pub type Result<T> = std::result::Result<T, TorchExtError>;
