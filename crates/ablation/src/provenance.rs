//! Where a result came from: the code (commit, dirty tree), the numerics (libtorch version,
//! CPU model, ATen's CPU kernels, MKL, threads, device) and the inputs (SHA-256 of the
//! dataset files, feature-network weights, autoencoder, cache manifest).
//!
//! Results of one config differ between machines in their last bits (MKL's vector maths and
//! ATen's kernels are CPU-dependent), and a training run amplifies last bits into sampling
//! noise; a result is comparable with another only when both say how they were made.
//! Every evaluated arm records one (the driver's `eval.json`), `results.json` records
//! the current one, and the report says at its top which arms were made differently.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::error::{AblationError, Result};

/// The commit this crate was built from (`build.rs`), "unknown" outside a git checkout.
pub const BUILD_COMMIT: &str = env!("LPL_GIT_COMMIT");

/// How and from what a result was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Git commit of the lpl build.
    pub commit: String,
    /// Whether the source tree had uncommitted changes to tracked files when this ran
    /// (`None`: not a git checkout, or it has moved to another commit since the build).
    pub dirty: Option<bool>,
    /// The libtorch version loaded (e.g. `2.11.0+cu130`).
    pub libtorch: String,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// ATen's CPU kernels (`DEFAULT`, `AVX2`, `AVX512`).
    pub aten_cpu_capability: String,
    /// The MKL linked into libtorch (its vector maths dispatches on the CPU by itself).
    pub mkl: String,
    /// libtorch's intra-op threads.
    pub threads: i64,
    /// The compute device (`cpu`, `cuda:0`).
    pub device: String,
    /// Input name -> SHA-256 (hex) of its bytes.
    pub inputs: BTreeMap<String, String>,
}

impl Provenance {
    /// This process, on `device`, with the given inputs' digests.
    pub fn current(device: Device, inputs: BTreeMap<String, String>) -> Self {
        let ext = |r: lpl_torch_ext::Result<String>| r.unwrap_or_else(|e| format!("unknown ({e})"));
        Self {
            commit: BUILD_COMMIT.to_string(),
            dirty: tree_dirty(),
            libtorch: libtorch_version(),
            cpu: cpu_model(),
            aten_cpu_capability: ext(lpl_torch_ext::runtime::cpu_capability()),
            mkl: ext(lpl_torch_ext::runtime::mkl_version()),
            threads: tch::get_num_threads() as i64,
            device: match device {
                Device::Cpu => "cpu".to_string(),
                Device::Cuda(i) => format!("cuda:{i}"),
                other => format!("{other:?}"),
            },
            inputs,
        }
    }

    /// The fields in which `other` differs from `self`, as `field: ours vs theirs` lines.
    pub fn differences(&self, other: &Provenance) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} vs {b}"));
            }
        };
        field("commit", self.commit.clone(), other.commit.clone());
        field("dirty", format!("{:?}", self.dirty), format!("{:?}", other.dirty));
        field("libtorch", self.libtorch.clone(), other.libtorch.clone());
        field("cpu", self.cpu.clone(), other.cpu.clone());
        field(
            "aten_cpu_capability",
            self.aten_cpu_capability.clone(),
            other.aten_cpu_capability.clone(),
        );
        field("mkl", self.mkl.clone(), other.mkl.clone());
        field("threads", self.threads.to_string(), other.threads.to_string());
        field("device", self.device.clone(), other.device.clone());
        let names: std::collections::BTreeSet<&String> =
            self.inputs.keys().chain(other.inputs.keys()).collect();
        for name in names {
            let get = |p: &Provenance| p.inputs.get(name).cloned().unwrap_or_else(|| "-".into());
            field(&format!("input {name}"), get(self), get(other));
        }
        out
    }
}

/// SHA-256 of one file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    feed_file(&mut hasher, path)?;
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 over several files: for each, its path relative to `base` (or its file name)
/// and its bytes, in the given order. Names enter the digest, so a renamed file changes it.
pub fn sha256_files(base: Option<&Path>, paths: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    for path in paths {
        let name = base
            .and_then(|b| path.strip_prefix(b).ok())
            .or_else(|| path.file_name().map(Path::new))
            .unwrap_or(path);
        hasher.update(name.to_string_lossy().as_bytes());
        hasher.update([0u8]);
        feed_file(&mut hasher, path)?;
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a file, or of every file under a directory (sorted relative paths).
pub fn sha256_path(path: &Path) -> Result<String> {
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        files.sort();
        sha256_files(Some(path), &files)
    } else {
        sha256_file(path)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e: std::io::Error| AblationError::Io { path: dir.to_path_buf(), source: e };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn feed_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let io = |e: std::io::Error| AblationError::Io { path: path.to_path_buf(), source: e };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `git status` of the source tree this crate was built from, if it is still at the built
/// commit: whether tracked files have uncommitted changes.
fn tree_dirty() -> Option<bool> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if git(&["rev-parse", "HEAD"])? != BUILD_COMMIT {
        return None;
    }
    git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty())
}

/// The version of the loaded libtorch, from the `version.py` / `build-version` beside its
/// `lib/` (the same lookup as `lpl doctor`).
fn libtorch_version() -> String {
    let lib = Path::new(env!("LPL_LIBTORCH_LIB"));
    lib.parent().and_then(lpl_torch_build::read_version).unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_name_the_files() {
        let dir = std::env::temp_dir().join(format!("lpl-prov-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("a.txt"), b"abc").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("sub/b.txt"), b"").unwrap_or_else(|e| panic!("{e}"));
        // FIPS 180-2's example: SHA-256("abc")
        assert_eq!(
            sha256_file(&dir.join("a.txt")).unwrap_or_else(|e| panic!("{e}")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let whole = sha256_path(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(dir.join("sub/b.txt"), dir.join("sub/c.txt"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(whole, sha256_path(&dir).unwrap_or_else(|e| panic!("{e}")), "a rename counts");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn differences_name_the_fields() {
        let a = Provenance::current(Device::Cpu, BTreeMap::from([("x".into(), "1".into())]));
        assert!(a.differences(&a).is_empty());
        let mut b = a.clone();
        b.threads += 1;
        b.inputs.insert("x".into(), "2".into());
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("threads: ") && d[1] == "input x: 1 vs 2", "{d:?}");
        assert!(!a.libtorch.is_empty() && a.commit.len() >= 7, "{a:?}");
    }
}
