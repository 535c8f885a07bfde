//! rpath to libtorch and a real link to libtorch_cuda for the `lpl` binary and its tests;
//! the locked tch version for `lpl doctor`.
use std::path::Path;

fn main() {
    lpl_torch_build::link_libtorch();
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| lpl_torch_build::locked_version(&text, "tch"))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LPL_TCH_VERSION={version}");
}
