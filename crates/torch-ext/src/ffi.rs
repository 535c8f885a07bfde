//! The C functions of `shim.cpp` and the error-buffer convention they share.

use std::ffi::{CStr, c_char};

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
    fn lpl_tf32_set(enabled: i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_tf32_get(matmul: *mut i32, conv: *mut i32, err: *mut c_char, len: usize) -> i32;
    fn lpl_device_memory(
        index: i32,
        current: *mut i64,
        peak: *mut i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_device_memory_reset_peak(index: i32, err: *mut c_char, len: usize) -> i32;
}

const ERR_LEN: usize = 1024;

/// Runs a shim call with an error buffer; a non-zero return becomes the buffer's message.
fn checked(call: &'static str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<()> {
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
