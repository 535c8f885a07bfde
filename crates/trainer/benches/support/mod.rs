//! What the trainer's benches share: argument lookup, peak memory, FLOP counts.

#[allow(dead_code)] // the sampling bench uses none of it
pub mod flops;

use tch::Device;

/// The value after `name` on the command line, else `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// This process's peak resident set (VmHWM), MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Peak memory of this process's work: the CUDA allocator's peak, else peak RSS.
pub fn peak_mb(device: Device) -> f64 {
    match device {
        Device::Cuda(_) => lpl_torch_ext::memory::stats(device)
            .map_or(f64::NAN, |m| m.peak as f64 / (1u64 << 20) as f64),
        _ => peak_rss_mb(),
    }
}

/// Waits for the device's queued work.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `cpu` or `cuda[:N]` as a device.
pub fn device(name: &str) -> Device {
    if name.starts_with("cuda") { Device::Cuda(0) } else { Device::Cpu }
}

/// Where a bench writes its JSON: `$LPL_BENCH_OUT`, else `target/bench`.
pub fn out_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("LPL_BENCH_OUT").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
