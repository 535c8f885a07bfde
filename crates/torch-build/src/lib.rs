//! libtorch as a directory on disk: where it is, which version it is, and how binaries
//! link to it.
//!
//! Used in three places, none of which may depend on `tch` itself:
//! - `xtask setup` validates a user's `LIBTORCH` or the managed install ([`LibtorchDir`]);
//! - every crate's `build.rs` calls [`link_libtorch`] so its binaries, tests and benches carry
//!   an rpath to `<libtorch>/lib` and really link `libtorch_cuda.so` when it exists;
//! - `lpl doctor` reads the version of the libtorch that was actually loaded.

use std::fmt;
use std::path::{Path, PathBuf};

/// The libtorch version that `tch = "=0.24.0"` is built against.
pub const REQUIRED_TORCH_VERSION: &str = "2.11.0";

/// Why a directory is not a usable libtorch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibtorchError {
    /// The directory does not exist.
    Missing(PathBuf),
    /// A file that every libtorch has is absent.
    Incomplete { dir: PathBuf, missing: PathBuf },
    /// Neither `build-version` (libtorch zip) nor `version.py` (Python wheel) is readable.
    UnknownVersion(PathBuf),
    /// The directory holds another libtorch version than the one `tch` needs.
    WrongVersion { dir: PathBuf, found: String, required: String },
}

impl fmt::Display for LibtorchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(dir) => write!(f, "libtorch directory {} does not exist", dir.display()),
            Self::Incomplete { dir, missing } => write!(
                f,
                "{} is not a libtorch directory: {} is missing",
                dir.display(),
                missing.display()
            ),
            Self::UnknownVersion(dir) => write!(
                f,
                "cannot tell the libtorch version of {}: neither build-version nor version.py is readable",
                dir.display()
            ),
            Self::WrongVersion { dir, found, required } => write!(
                f,
                "libtorch at {} is version {found}, but tch 0.24.0 requires libtorch {required}",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for LibtorchError {}

/// A libtorch installation: either an unpacked libtorch zip (`build-version` at its root) or
/// the `torch` package directory of a Python installation (`version.py` at its root). Both
/// have `lib/` and `include/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibtorchDir {
    root: PathBuf,
    version: String,
}

impl LibtorchDir {
    /// Opens and validates `root` without checking the version against
    /// [`REQUIRED_TORCH_VERSION`].
    pub fn open(root: impl AsRef<Path>) -> Result<Self, LibtorchError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(LibtorchError::Missing(root));
        }
        for needed in ["lib", "include/torch"] {
            let path = root.join(needed);
            if !path.exists() {
                return Err(LibtorchError::Incomplete { dir: root, missing: path });
            }
        }
        if !has_torch_cpu(&root.join("lib")) {
            let missing = root.join("lib").join(dylib_name("torch_cpu"));
            return Err(LibtorchError::Incomplete { dir: root, missing });
        }
        let version =
            read_version(&root).ok_or_else(|| LibtorchError::UnknownVersion(root.clone()))?;
        Ok(Self { root, version })
    }

    /// Opens `root` and checks that it is libtorch [`REQUIRED_TORCH_VERSION`] (any build
    /// suffix such as `+cu130` or `+cpu` accepted).
    pub fn open_required(root: impl AsRef<Path>) -> Result<Self, LibtorchError> {
        let dir = Self::open(root)?;
        if dir.base_version() != REQUIRED_TORCH_VERSION {
            return Err(LibtorchError::WrongVersion {
                dir: dir.root,
                found: dir.version,
                required: REQUIRED_TORCH_VERSION.to_string(),
            });
        }
        Ok(dir)
    }

    /// The directory holding `lib/` and `include/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/lib`.
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("lib")
    }

    /// The full version string, e.g. `2.11.0+cu130`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version without its build suffix, e.g. `2.11.0`.
    pub fn base_version(&self) -> &str {
        base_version(&self.version)
    }

    /// Whether this libtorch ships CUDA kernels (`libtorch_cuda.so`).
    pub fn has_cuda(&self) -> bool {
        self.lib_dir().join(dylib_name("torch_cuda")).exists()
    }
}

/// `2.11.0+cu130` -> `2.11.0`.
pub fn base_version(version: &str) -> &str {
    version.split_once('+').map_or(version, |(base, _)| base).trim()
}

fn has_torch_cpu(lib: &Path) -> bool {
    lib.join(dylib_name("torch_cpu")).exists() || lib.join(dylib_name("torch")).exists()
}

fn dylib_name(stem: &str) -> String {
    if cfg!(target_os = "macos") {
        format!("lib{stem}.dylib")
    } else if cfg!(windows) {
        format!("{stem}.dll")
    } else {
        format!("lib{stem}.so")
    }
}

/// Reads the version of the libtorch at `root`: `build-version` holds e.g. `2.11.0+cpu`;
/// a wheel's `version.py` holds a line `__version__ = '2.11.0+cu130'`.
pub fn read_version(root: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        let v = text.trim();
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    parse_version_py(&text)
}

/// Extracts `__version__` from the text of torch's `version.py`.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?;
        let rest = rest.trim_start().strip_prefix(':').map_or(rest, |r| {
            // `__version__: str = '...'`
            r.split_once('=').map_or(r, |(_, v)| v)
        });
        let value = rest.trim_start().trim_start_matches('=').trim();
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// Called from a crate's `build.rs`: gives that crate's binaries, tests, benches and examples
/// an rpath to libtorch's `lib/` (no `LD_LIBRARY_PATH` needed), links `libtorch_cuda` with
/// `--no-as-needed` when it exists (else the linker drops it and CUDA is silently
/// unavailable), and exposes the directory as `env!("LPL_LIBTORCH_LIB")`.
///
/// The crate must depend on `torch-sys` directly so that cargo hands its build script
/// `DEP_TCH_LIBTORCH_LIB`.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // Under docs-only builds torch-sys reports no directory; nothing to link then.
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: does this crate depend on torch-sys directly?"
        );
        println!("cargo:rustc-env=LPL_LIBTORCH_LIB=");
        return;
    };
    let lib = PathBuf::from(lib);
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    println!("cargo:rustc-env=LPL_LIBTORCH_LIB={}", lib.display());
    if target_os == "linux" || target_os == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if target_os == "linux" {
        let cuda = lib.join("libtorch_cuda.so");
        if cuda.exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,{},--as-needed", cuda.display());
        }
    }
}

/// The version of package `name` recorded in the text of a `Cargo.lock`.
pub fn locked_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == needle {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_py_forms() {
        let wheel = "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n";
        assert_eq!(parse_version_py(wheel).as_deref(), Some("2.11.0+cu130"));
        let typed = "__version__: str = \"2.11.0\"\n";
        assert_eq!(parse_version_py(typed).as_deref(), Some("2.11.0"));
        assert_eq!(parse_version_py("git_version = 'abc'\n"), None);
    }

    #[test]
    fn lock_version_lookup() {
        let lock = "[[package]]\nname = \"tch\"\nversion = \"0.24.0\"\n\n[[package]]\nname = \"torch-sys\"\nversion = \"0.24.0\"\n";
        assert_eq!(locked_version(lock, "tch").as_deref(), Some("0.24.0"));
        assert_eq!(locked_version(lock, "tchx"), None);
    }

    #[test]
    fn base_version_drops_suffix() {
        assert_eq!(base_version("2.11.0+cu130"), "2.11.0");
        assert_eq!(base_version("2.10.0\n"), "2.10.0");
    }

    #[test]
    fn open_reports_missing_and_wrong_versions() {
        let tmp = std::env::temp_dir().join(format!("lpl-torch-build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(LibtorchDir::open(&tmp), Err(LibtorchError::Missing(tmp.clone())));
        std::fs::create_dir_all(tmp.join("lib")).unwrap();
        std::fs::create_dir_all(tmp.join("include/torch")).unwrap();
        assert!(matches!(LibtorchDir::open(&tmp), Err(LibtorchError::Incomplete { .. })));
        std::fs::write(tmp.join("lib").join(dylib_name("torch_cpu")), b"").unwrap();
        assert_eq!(LibtorchDir::open(&tmp), Err(LibtorchError::UnknownVersion(tmp.clone())));
        std::fs::write(tmp.join("build-version"), "2.10.0+cpu\n").unwrap();
        let err = LibtorchDir::open_required(&tmp).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("2.10.0+cpu") && msg.contains("2.11.0"), "{msg}");
        std::fs::write(tmp.join("build-version"), "2.11.0+cpu\n").unwrap();
        let dir = LibtorchDir::open_required(&tmp).unwrap();
        assert_eq!(dir.base_version(), "2.11.0");
        assert!(!dir.has_cuda());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
