//! `cargo xtask setup`: find libtorch 2.11.0 or install it, then link it as `.libtorch` in the
//! workspace, where `.cargo/config.toml` points `LIBTORCH`.
//!
//! Order: a `LIBTORCH` exported by the user; a complete managed install under
//! `$LPL_HOME/torch-<version>`; else a new managed install (a Python virtual environment with
//! `torch==<version>` from pip). An install is built in `torch-<version>.partial-<pid>` and
//! renamed into place only after it validated, so an interrupted or failed install is never
//! used: its leftovers are removed and the install is redone on the next run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lpl_torch_build::{LibtorchDir, REQUIRED_TORCH_VERSION};

use crate::{cargo, python};

/// File inside a managed install holding the path (relative to the install) of the torch
/// package directory; written last, so its presence marks a complete install.
const MARKER: &str = "libtorch-path";
const LINK: &str = ".libtorch";

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `LPL_HOME`, else `$XDG_CACHE_HOME/lpl`, else `~/.cache/lpl`.
pub fn lpl_home() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = non_empty("LPL_HOME") {
        return Ok(home);
    }
    if let Some(cache) = non_empty("XDG_CACHE_HOME") {
        return Ok(cache.join("lpl"));
    }
    let home = non_empty("HOME")
        .context("neither LPL_HOME nor HOME is set; set LPL_HOME to a writable directory")?;
    Ok(home.join(".cache").join("lpl"))
}

/// Where libtorch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    User,
    Managed,
    Installed,
}

/// Runs the whole setup and returns the libtorch now linked as `.libtorch`.
pub fn run() -> Result<LibtorchDir> {
    let start = Instant::now();
    let root = workspace_root();
    let (dir, source) = match user_libtorch(&root) {
        Some(path) => {
            let dir = LibtorchDir::open_required(&path)
                .with_context(|| format!("LIBTORCH={} is not usable", path.display()))?;
            (dir, Source::User)
        }
        None => managed(&lpl_home()?)?,
    };
    link(&root, dir.root())?;
    crate::assets::ensure_gloo_headers();
    if source != Source::User {
        ensure_nccl_headers(&dir);
    }
    let how = match source {
        Source::User => "from LIBTORCH",
        Source::Managed => "managed, already installed",
        Source::Installed => "managed, installed now",
    };
    eprintln!(
        "libtorch {} at {} ({how}; {:.2}s)",
        dir.version(),
        dir.root().display(),
        start.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// A `LIBTORCH` the user exported. `.cargo/config.toml` sets `LIBTORCH` to our own link for
/// every process cargo runs, this one included; that value is not the user's.
fn user_libtorch(root: &Path) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os("LIBTORCH").filter(|v| !v.is_empty())?);
    let ours = root.join(LINK);
    if value == ours {
        return None;
    }
    Some(value)
}

fn install_dir(home: &Path) -> PathBuf {
    home.join(format!("torch-{REQUIRED_TORCH_VERSION}"))
}

/// The torch package directory of a complete managed install, if there is one.
fn complete_install(install: &Path) -> Option<LibtorchDir> {
    let rel = std::fs::read_to_string(install.join(MARKER)).ok()?;
    LibtorchDir::open_required(install.join(rel.trim())).ok()
}

fn managed(home: &Path) -> Result<(LibtorchDir, Source)> {
    let install = install_dir(home);
    if let Some(dir) = complete_install(&install) {
        return Ok((dir, Source::Managed));
    }
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create LPL_HOME {}", home.display()))?;
    remove_stale_partials(home)?;
    if install.exists() {
        eprintln!(
            "managed libtorch at {} is incomplete or invalid: reinstalling",
            install.display()
        );
        std::fs::remove_dir_all(&install).with_context(|| {
            format!("cannot remove the incomplete install {}", install.display())
        })?;
    }
    let python = python::find()?;
    let partial =
        home.join(format!("torch-{REQUIRED_TORCH_VERSION}.partial-{}", std::process::id()));
    eprintln!(
        "installing torch=={REQUIRED_TORCH_VERSION} (about 4.6 GB with its CUDA wheels) into {} with {} (Python {}.{})",
        install.display(),
        python.exe.display(),
        python.version.0,
        python.version.1
    );
    let venv_python = python::create_venv(&python, &partial.join("venv"))?;
    python::pip_install_torch(&venv_python, REQUIRED_TORCH_VERSION)?;
    let torch = python::torch_package_dir(&venv_python)?;
    LibtorchDir::open_required(&torch)
        .context("pip installed torch, but its libtorch is not usable")?;
    let rel = torch.strip_prefix(&partial).with_context(|| {
        format!("torch was installed outside the environment, at {}", torch.display())
    })?;
    std::fs::write(partial.join(MARKER), rel.to_string_lossy().as_bytes())
        .with_context(|| format!("cannot write {}", partial.join(MARKER).display()))?;
    point_scripts_at(&partial.join("venv/bin"), &partial, &install)?;
    match std::fs::rename(&partial, &install) {
        Ok(()) => {}
        // Another setup finished first: use its install and drop ours.
        Err(_) if complete_install(&install).is_some() => {
            let _ = std::fs::remove_dir_all(&partial);
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!("cannot move {} to {}", partial.display(), install.display())
            });
        }
    }
    let dir = complete_install(&install)
        .with_context(|| format!("the new install at {} did not validate", install.display()))?;
    Ok((dir, Source::Installed))
}

/// The CUDA C runtime headers (`crt/host_config.h`) and libcu++ (`nv/target`) that NCCL's
/// process group needs at build time and the torch wheel does not ship (it has `nccl.h` and
/// the rest of the CUDA runtime headers): `nvidia-cuda-crt` and `nvidia-cuda-cccl` for the
/// wheel's CUDA version, pip-installed into the managed environment (3 MB, headers only).
/// Without them the build still succeeds, without NCCL (crates/torch-ext/build.rs).
fn ensure_nccl_headers(dir: &LibtorchDir) {
    let root = dir.root();
    if !dir.lib_dir().join("libtorch_cuda.so").exists() {
        return;
    }
    let include = root.join("../nvidia/cu13/include");
    if include.join("crt/host_config.h").exists() && include.join("nv/target").exists() {
        return;
    }
    let cuda = std::fs::read_to_string(root.join("version.py")).ok().and_then(|v| {
        v.lines().find_map(|l| {
            l.strip_prefix("cuda: Optional[str] = '")?.strip_suffix('\'').map(String::from)
        })
    });
    let python = root.join("../../../../bin/python");
    let warn = |why: String| {
        eprintln!(
            "warning: {why}: this build will not have NCCL (several GPUs fall back to Gloo); \
             set NCCL_INCLUDE and CUDA_INCLUDE to a CUDA toolkit's headers to build it"
        )
    };
    let Some(cuda) = cuda.filter(|c| c.starts_with("13.")) else {
        return warn(format!("{} is not a CUDA 13 wheel", root.display()));
    };
    if !python.exists() {
        return warn(format!("no managed Python at {}", python.display()));
    }
    let wheels = [format!("nvidia-cuda-crt=={cuda}.*"), format!("nvidia-cuda-cccl=={cuda}.*")];
    eprintln!("installing the CUDA {cuda} headers NCCL's build needs ({})", wheels.join(", "));
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-deps"])
        .args(&wheels)
        .stdin(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        warn(format!("pip install {} failed", wheels.join(" ")));
    }
}

/// pip writes the venv's own path into its scripts (`torchrun`'s `#!` line, `activate`):
/// rewrite the building directory `from` to the final `to` before the move, so that
/// `<venv>/bin/torchrun` runs.
fn point_scripts_at(bin: &Path, from: &Path, to: &Path) -> Result<()> {
    let (from, to) = (from.to_string_lossy().to_string(), to.to_string_lossy().to_string());
    let entries =
        std::fs::read_dir(bin).with_context(|| format!("cannot list {}", bin.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        // binaries and unreadable files are left alone
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if text.contains(&from) {
            std::fs::write(&path, text.replace(&from, &to))
                .with_context(|| format!("cannot rewrite {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes `torch-*.partial-<pid>` directories whose process is gone (interrupted installs).
fn remove_stale_partials(home: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(home).with_context(|| format!("cannot list {}", home.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((_, pid)) = name.split_once(".partial-") else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive || !cfg!(target_os = "linux") {
            eprintln!("removing interrupted install {}", entry.path().display());
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Points `<root>/.libtorch` at `target`. A real directory there (a libtorch the user put in
/// place) is left alone. When the link changes target, torch-sys is cleaned so that it
/// rebuilds against the new headers.
fn link(root: &Path, target: &Path) -> Result<()> {
    let path = root.join(LINK);
    let target = std::fs::canonicalize(target)
        .with_context(|| format!("cannot resolve {}", target.display()))?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let current = std::fs::read_link(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if current == target {
                return Ok(());
            }
            replace_link(&path, &target)?;
            cargo::clean_torch_sys(root)
        }
        Ok(_) => {
            if std::fs::canonicalize(&path)? != target {
                bail!(
                    "{} is a real directory, not the link setup manages; remove it or export LIBTORCH={}",
                    path.display(),
                    path.display()
                );
            }
            Ok(())
        }
        Err(_) => replace_link(&path, &target),
    }
}

#[cfg(unix)]
fn replace_link(path: &Path, target: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create link {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move link into place at {}", path.display()))
}

#[cfg(not(unix))]
fn replace_link(_path: &Path, target: &Path) -> Result<()> {
    bail!("automatic setup needs a Unix system; export LIBTORCH={}", target.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_libtorch(root: &Path, version: &str) {
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("include/torch")).unwrap();
        std::fs::write(root.join("lib/libtorch_cpu.so"), b"").unwrap();
        std::fs::write(root.join("version.py"), format!("__version__ = '{version}'\n")).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lpl-xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn complete_install_needs_marker_and_right_version() {
        let home = scratch("marker");
        let install = install_dir(&home);
        let torch = install.join("venv/lib/python3.11/site-packages/torch");
        fake_libtorch(&torch, "2.11.0+cu130");
        assert!(complete_install(&install).is_none(), "no marker: an interrupted install");
        std::fs::write(install.join(MARKER), "venv/lib/python3.11/site-packages/torch\n").unwrap();
        assert_eq!(complete_install(&install).unwrap().version(), "2.11.0+cu130");
        std::fs::write(torch.join("version.py"), "__version__ = '2.10.0'\n").unwrap();
        assert!(complete_install(&install).is_none(), "wrong version is not complete");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn stale_partials_are_removed() {
        let home = scratch("partials");
        let stale = home.join("torch-2.11.0.partial-4294967295");
        std::fs::create_dir_all(stale.join("venv")).unwrap();
        let live = home.join(format!("torch-2.11.0.partial-{}", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        remove_stale_partials(&home).unwrap();
        assert!(!stale.exists());
        assert!(live.exists(), "a running install is left alone");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn link_is_replaced_atomically_and_kept_when_same() {
        let dir = scratch("link");
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        link(&dir, &a).unwrap();
        assert_eq!(std::fs::read_link(dir.join(LINK)).unwrap(), std::fs::canonicalize(&a).unwrap());
        link(&dir, &a).unwrap();
        link(&dir, &b).unwrap();
        assert_eq!(std::fs::read_link(dir.join(LINK)).unwrap(), std::fs::canonicalize(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
