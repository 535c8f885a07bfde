//! The C functions of `shim.cpp` and the error-buffer convention they share.

use std::ffi::{CStr, c_char, c_void};

use tch::Tensor;

use crate::multi_tensor::AdamWStep;
use crate::{Result, TorchExtError};

unsafe extern "C" {
    fn lpl_autocast_get(
        device: i32,
        enabled: *mut i32,
        dtype: *mut i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_autocast_set(device: i32, enabled: i32, dtype: i32, err: *mut c_char, len: usize)
    -> i32;
    fn lpl_autocast_increment_nesting() -> i32;
    fn lpl_autocast_decrement_nesting() -> i32;
    fn lpl_runtime_info(
        which: i32,
        out: *mut c_char,
        out_len: usize,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_tf32_set(enabled: i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_profiler_start(cuda: i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_profiler_stop(path: *const c_char, err: *mut c_char, len: usize) -> i32;
    fn lpl_tf32_get(matmul: *mut i32, conv: *mut i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_device_memory(
        index: i32,
        current: *mut i64,
        peak: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_device_memory_reset_peak(index: i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_fused_adamw(
        params: *const *const c_void,
        grads: *const *const c_void,
        exp_avgs: *const *const c_void,
        exp_avg_sqs: *const *const c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: *const c_void,
        found_inf: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_foreach_lerp_tensor(
        targets: *const *const c_void,
        ends: *const *const c_void,
        n: usize,
        weight: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_foreach_total_norm(
        tensors: *const *const c_void,
        n: usize,
        out: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_foreach_mul(
        tensors: *const *const c_void,
        n: usize,
        scale: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// The `at::Tensor*` handles of tch tensors (valid while the tensors live).
pub(crate) fn handles(tensors: &[Tensor]) -> Vec<*const c_void> {
    tensors.iter().map(|t| t.as_ptr() as *const c_void).collect()
}

pub(crate) fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    a: AdamWStep,
    step: &Tensor,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let (p, g, m, v) = (handles(params), handles(grads), handles(m), handles(v));
    let n = p.len();
    // SAFETY: four arrays of `n` live tensor handles (the caller checked the lengths), `step`
    // and `found_inf` (or null) live; the shim only reads the arrays during the call.
    checked("fused_adamw", |e, l| unsafe {
        lpl_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            a.lr,
            a.beta1,
            a.beta2,
            a.weight_decay,
            a.eps,
            step.as_ptr() as *const c_void,
            found_inf.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_void),
            e,
            l,
        )
    })
}

pub(crate) fn foreach_lerp_tensor(
    targets: &[Tensor],
    ends: &[Tensor],
    weight: &Tensor,
) -> Result<()> {
    let (t, x) = (handles(targets), handles(ends));
    // SAFETY: two arrays of `t.len()` live handles (lengths checked by the caller); `weight`
    // outlives the call.
    checked("foreach_lerp_tensor", |e, l| unsafe {
        lpl_foreach_lerp_tensor(
            t.as_ptr(),
            x.as_ptr(),
            t.len(),
            weight.as_ptr() as *const c_void,
            e,
            l,
        )
    })
}

pub(crate) fn foreach_total_norm(tensors: &[Tensor], out: &Tensor) -> Result<()> {
    let t = handles(tensors);
    // SAFETY: live handles; `out` outlives the call.
    checked("foreach_total_norm", |e, l| unsafe {
        lpl_foreach_total_norm(t.as_ptr(), t.len(), out.as_ptr() as *const c_void, e, l)
    })
}

pub(crate) fn foreach_mul(tensors: &[Tensor], scale: &Tensor) -> Result<()> {
    let t = handles(tensors);
    // SAFETY: live handles; `scale` outlives the call.
    checked("foreach_mul", |e, l| unsafe {
        lpl_foreach_mul(t.as_ptr(), t.len(), scale.as_ptr() as *const c_void, e, l)
    })
}

const ERR_LEN: usize = 1024;

/// Runs a shim call with an error buffer; a non-zero return becomes the buffer's message.
pub(crate) fn checked(call: &'static str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<()> {
    let mut buf = [0 as c_char; ERR_LEN];
    if f(buf.as_mut_ptr(), ERR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated string of at most ERR_LEN bytes (or nothing,
    // and the zeroed buffer is an empty string).
    let message = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    Err(TorchExtError { call, message })
}

/// `(enabled, ScalarType code)` of autocast on `device` (0 CPU, 1 CUDA).
pub(crate) fn autocast_get(device: i32) -> Result<(bool, i32)> {
    let (mut enabled, mut dtype) = (0i32, 0i32);
    // SAFETY: out-pointers to live locals; the error buffer is owned by `checked`.
    checked("autocast_get", |e, l| unsafe {
        lpl_autocast_get(device, &mut enabled, &mut dtype, e, l)
    })?;
    Ok((enabled != 0, dtype))
}

pub(crate) fn autocast_set(device: i32, enabled: bool, dtype: i32) -> Result<()> {
    // SAFETY: plain values and the error buffer owned by `checked`.
    checked("autocast_set", |e, l| unsafe { lpl_autocast_set(device, enabled.into(), dtype, e, l) })
}

pub(crate) fn autocast_increment_nesting() {
    // SAFETY: no arguments; libtorch's thread-local counter.
    unsafe { lpl_autocast_increment_nesting() };
}

pub(crate) fn autocast_decrement_nesting() {
    // SAFETY: as above; clears the cast cache when the count reaches zero.
    unsafe { lpl_autocast_decrement_nesting() };
}

/// A runtime info string of the shim (`which`: 0 ATen's CPU capability, 1 MKL's version).
pub(crate) fn runtime_info(which: i32) -> Result<String> {
    let mut out = [0 as c_char; 512];
    // SAFETY: the shim writes at most `out.len()` bytes, NUL-terminated, into the local.
    checked("runtime_info", |e, l| unsafe {
        lpl_runtime_info(which, out.as_mut_ptr(), out.len(), e, l)
    })?;
    // SAFETY: NUL-terminated by the shim (or still all zeros: the empty string).
    Ok(unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned())
}

pub(crate) fn profiler_start(cuda: bool) -> Result<()> {
    // SAFETY: a plain value and the error buffer owned by `checked`.
    checked("profiler_start", |e, l| unsafe { lpl_profiler_start(cuda.into(), e, l) })
}

pub(crate) fn profiler_stop(path: &std::ffi::CStr) -> Result<()> {
    // SAFETY: a NUL-terminated path that outlives the call; the error buffer of `checked`.
    checked("profiler_stop", |e, l| unsafe { lpl_profiler_stop(path.as_ptr(), e, l) })
}

pub(crate) fn tf32_set(enabled: bool) -> Result<()> {
    // SAFETY: a plain value and the error buffer owned by `checked`.
    checked("tf32_set", |e, l| unsafe { lpl_tf32_set(enabled.into(), e, l) })
}

pub(crate) fn tf32_get() -> Result<(bool, bool)> {
    let (mut matmul, mut conv) = (0i32, 0i32);
    // SAFETY: out-pointers to live locals.
    checked("tf32_get", |e, l| unsafe { lpl_tf32_get(&mut matmul, &mut conv, e, l) })?;
    Ok((matmul != 0, conv != 0))
}

pub(crate) fn device_memory(index: i32) -> Result<(i64, i64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: out-pointers to live locals.
    checked("device_memory", |e, l| unsafe {
        lpl_device_memory(index, &mut current, &mut peak, e, l)
    })?;
    Ok((current, peak))
}

pub(crate) fn device_memory_reset_peak(index: i32) -> Result<()> {
    // SAFETY: a plain value and the error buffer owned by `checked`.
    checked("device_memory_reset_peak", |e, l| unsafe { lpl_device_memory_reset_peak(index, e, l) })
}
