//! Compiles `src/shim.cpp` and `src/c10d.cpp` against the headers of the libtorch that
//! torch-sys links, and the usual rpath / libtorch_cuda link of our crates. `c10d.cpp` gets
//! Gloo (`-DUSE_C10D_GLOO`) when Gloo's headers are found: `$GLOO_INCLUDE`, or a system
//! include directory (Debian's `libgloo-dev`); its code is inside libtorch_cpu already. It gets
//! NCCL (`-DUSE_C10D_NCCL -DUSE_CUDA`) when libtorch is a CUDA build and `nccl.h` and the CUDA
//! runtime headers (with `crt/host_config.h` and libcu++'s `nv/target`) are found:
//! `$NCCL_INCLUDE` / `$CUDA_INCLUDE`, the pip wheels beside the torch package
//! (`nvidia/nccl/include`, `nvidia/cu13/include`: `cargo xtask setup` adds the two header
//! wheels the torch wheel lacks), or `/usr/local/cuda/include`; its code is inside
//! libtorch_cuda.
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

/// The first of `candidates` holding every one of `files`.
fn dir_with(candidates: &[PathBuf], files: &[&str]) -> Option<PathBuf> {
    candidates.iter().find(|d| files.iter().all(|f| d.join(f).exists())).cloned()
}

/// The include directories NCCL's process group needs (nccl.h's, the CUDA runtime's), when
/// `lib` (libtorch's lib directory) is a CUDA build and both are found.
fn nccl_headers(lib: &Path) -> Option<[PathBuf; 2]> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    // the torch wheel's own layout: <site-packages>/torch/lib and <site-packages>/nvidia
    let nvidia = lib.join("../../nvidia");
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from).into_iter();
    let nccl: Vec<PathBuf> = env("NCCL_INCLUDE")
        .chain([
            nvidia.join("nccl/include"),
            "/usr/include".into(),
            "/usr/local/cuda/include".into(),
        ])
        .collect();
    let cuda: Vec<PathBuf> = env("CUDA_INCLUDE")
        .chain(env("CUDA_HOME").map(|h| h.join("include")))
        .chain([
            nvidia.join("cu13/include"),
            nvidia.join("cuda_runtime/include"),
            "/usr/local/cuda/include".into(),
        ])
        .collect();
    let nccl = dir_with(&nccl, &["nccl.h"])?;
    let cuda = dir_with(&cuda, &["cuda_runtime_api.h", "crt/host_config.h", "nv/target"])?;
    Some([nccl, cuda])
}

fn main() {
    lpl_torch_build::link_libtorch();
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // docs-only builds: no libtorch, nothing to compile
        return;
    };
    let lib = PathBuf::from(lib);
    // for the tests: which libtorch this build is against
    println!("cargo:rustc-env=LPL_TORCH_EXT_LIBTORCH_LIB={}", lib.display());
    let include = lib.join("../include");
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
    println!("cargo:rerun-if-env-changed=NCCL_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    match nccl_headers(&lib) {
        Some(dirs) => {
            for dir in &dirs {
                println!("cargo:rerun-if-changed={}", dir.display());
                // after the torch include directories: the CUDA headers must not shadow them;
                // a system directory is searched already (see gloo_headers)
                if dir != Path::new("/usr/include") {
                    c10d.include(dir);
                }
            }
            c10d.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
        }
        None if lib.join("libtorch_cuda.so").exists() => {
            // `cargo xtask setup` installing the header wheels adds nvidia/cu13/include/crt
            println!("cargo:rerun-if-changed={}", lib.join("../../nvidia").display());
            println!(
                "cargo:warning=nccl.h or the CUDA runtime headers (crt/host_config.h, \
                 nv/target) not found: this build cannot train on several GPUs over NCCL \
                 (run `cargo xtask setup`, or set NCCL_INCLUDE and CUDA_INCLUDE, then rebuild)"
            );
        }
        None => {}
    }
    c10d.compile("lpl_torch_ext_c10d");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
