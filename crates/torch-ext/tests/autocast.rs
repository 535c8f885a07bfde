//! The shim on CPU: autocast regions change the dtype of matmuls and nothing else, nest, and
//! restore; TF32 flags toggle; allocator statistics refuse non-CUDA devices with an error.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use lpl_torch_ext::{Autocast, AutocastDtype, autocast, memory, tf32};
use tch::{Device, Kind, Tensor};

/// Autocast and TF32 state is global / per thread: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn bf16_region_casts_matmuls_keeps_f32_params_and_restores() {
    let _g = SERIAL.lock().unwrap();
    let cpu = Device::Cpu;
    assert!(!autocast::state(cpu).unwrap().0);
    let x = Tensor::randn([4, 8], (Kind::Float, cpu));
    let w = Tensor::randn([8, 3], (Kind::Float, cpu)).set_requires_grad(true);
    {
        let _r = Autocast::enter(cpu, AutocastDtype::BFloat16).unwrap();
        assert_eq!(autocast::state(cpu).unwrap(), (true, Some(Kind::BFloat16)));
        let y = x.matmul(&w);
        assert_eq!(y.kind(), Kind::BFloat16, "matmul runs in bf16 inside the region");
        // the result equals the matmul of bf16-rounded operands
        let expect = x.to_kind(Kind::BFloat16).matmul(&w.detach().to_kind(Kind::BFloat16));
        // exact: autocast dispatches the very same bf16 matmul on the same operands (one process)
        assert!(y.detach().allclose(&expect, 0.0, 0.0, false));
        // an f32 sub-region: ops on f32 inputs stay f32
        {
            let _f32 = Autocast::disable(cpu).unwrap();
            assert!(!autocast::state(cpu).unwrap().0);
            assert_eq!(x.matmul(&w).kind(), Kind::Float);
        }
        assert!(autocast::state(cpu).unwrap().0, "the inner region restored");
        y.to_kind(Kind::Float).sum(Kind::Float).backward();
    }
    assert!(!autocast::state(cpu).unwrap().0, "the outer region restored");
    assert_eq!(x.matmul(&w).kind(), Kind::Float);
    // gradients of the f32 master weight are f32
    assert_eq!(w.grad().kind(), Kind::Float);
    // and close to the f32 gradient (x^T 1), within bf16 rounding of x (8 mantissa bits)
    let exact = x.transpose(0, 1).matmul(&Tensor::ones([4, 3], (Kind::Float, cpu)));
    let err = (w.grad() - &exact).abs().max().double_value(&[]);
    let scale = exact.abs().max().double_value(&[]);
    // 2^-7 of the max: 4 rounded x (u = 2^-8) + the bf16 result, rms ~5e-3 vs ~0.03; no CPU part
    assert!(err <= scale * 2f64.powi(-7), "grad error {err} vs scale {scale}");
}

#[test]
fn maybe_runs_plain_without_dtype() {
    let _g = SERIAL.lock().unwrap();
    let cpu = Device::Cpu;
    let a = Tensor::randn([2, 2], (Kind::Float, cpu));
    let plain = autocast::maybe(cpu, None, || a.matmul(&a)).unwrap();
    assert_eq!(plain.kind(), Kind::Float);
    let bf16 = autocast::maybe(cpu, Some(AutocastDtype::BFloat16), || a.matmul(&a)).unwrap();
    assert_eq!(bf16.kind(), Kind::BFloat16);
    assert_eq!(AutocastDtype::BFloat16.to_string(), "bf16");
}

#[test]
fn tf32_flags_toggle_and_restore() {
    let _g = SERIAL.lock().unwrap();
    let before = tf32::get().unwrap();
    tf32::set(true).unwrap();
    assert_eq!(tf32::get().unwrap(), (true, true));
    tf32::set(false).unwrap();
    assert_eq!(tf32::get().unwrap(), (false, false));
    tf32::set(before.0).unwrap();
}

#[test]
fn memory_statistics_are_cuda_only() {
    let err = memory::stats(Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("CUDA devices only"), "{err}");
    if !tch::Cuda::is_available() {
        // libtorch's own exception comes back as an error, not a crash
        let err = memory::stats(Device::Cuda(0)).unwrap_err();
        assert!(err.to_string().starts_with("libtorch (device_memory)"), "{err}");
    }
    if tch::Cuda::is_available() {
        let cuda = Device::Cuda(0);
        memory::reset_peak(cuda).unwrap();
        let t = Tensor::zeros([1 << 20], (Kind::Float, cuda));
        let m = memory::stats(cuda).unwrap();
        assert!(m.peak >= 4 << 20 && m.current >= 4 << 20, "{m:?}");
        drop(t);
    }
}

#[test]
fn linear_and_conv_are_cast_too() {
    let _g = SERIAL.lock().unwrap();
    let cpu = Device::Cpu;
    let x = Tensor::randn([2, 8], (Kind::Float, cpu));
    let w = Tensor::randn([3, 8], (Kind::Float, cpu));
    let img = Tensor::randn([1, 2, 5, 5], (Kind::Float, cpu));
    let k = Tensor::randn([4, 2, 3, 3], (Kind::Float, cpu));
    let _r = Autocast::enter(cpu, AutocastDtype::BFloat16).unwrap();
    assert_eq!(x.linear(&w, None::<Tensor>).kind(), Kind::BFloat16);
    assert_eq!(img.conv2d(&k, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).kind(), Kind::BFloat16);
}
