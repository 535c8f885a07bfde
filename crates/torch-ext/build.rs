//! Compiles `src/shim.cpp` against the headers of the libtorch that torch-sys links, and the
//! usual rpath / libtorch_cuda link of our crates.
use std::path::PathBuf;

fn main() {
    lpl_torch_build::link_libtorch();
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // docs-only builds: no libtorch, nothing to compile
        return;
    };
    let include = PathBuf::from(lib).join("../include");
    // the ABI of libtorch >= 2.7 wheels and zips; torch-sys reads the same variable
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .compile("lpl_torch_ext_shim");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
