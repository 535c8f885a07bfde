//! Compiles `src/shim.cpp` and `src/c10d.cpp` against the headers of the libtorch that
//! torch-sys links, and the usual rpath / libtorch_cuda link of our crates. `c10d.cpp` gets
//! Gloo (`-DUSE_C10D_GLOO`) when Gloo's headers are found: `$GLOO_INCLUDE`, or a system
//! include directory (Debian's `libgloo-dev`); its code is inside libtorch_cpu already.
use std::path::{Path, PathBuf};

/// The directory holding `gloo/algorithm.h`, and whether it must be passed to the compiler
/// (a system include directory is searched already; passing it again breaks glibc's
/// `#include_next`).
fn gloo_headers() -> Option<(PathBuf, bool)> {
    if let Some(dir) = std::env::var_os("GLOO_INCLUDE").map(PathBuf::from) {
        return dir.join("gloo/algorithm.h").is_file().then_some((dir, true));
    }
    ["/usr/include", "/usr/local/include"]
        .iter()
        .map(Path::new)
        .find(|d| d.join("gloo/algorithm.h").is_file())
        .map(|d| (d.to_path_buf(), d != Path::new("/usr/include")))
}

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

    println!("cargo:rerun-if-changed=src/c10d.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    let mut c10d = cc::Build::new();
    c10d.cpp(true)
        .file("src/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str());
    match gloo_headers() {
        Some((dir, pass)) => {
            // a rebuild follows a change of the headers (an upgrade, a removal)
            println!("cargo:rerun-if-changed={}", dir.join("gloo").display());
            if pass {
                c10d.include(&dir);
            }
            c10d.define("USE_C10D_GLOO", None);
        }
        None => {
            // installing libgloo-dev adds /usr/include/gloo: rebuild then
            println!("cargo:rerun-if-changed=/usr/include");
            println!(
                "cargo:warning=Gloo's headers not found: this build cannot train on several \
                 processes (install libgloo-dev or set GLOO_INCLUDE, then rebuild)"
            );
        }
    }
    c10d.compile("lpl_torch_ext_c10d");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
