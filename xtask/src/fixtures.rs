//! `cargo xtask fixtures`: regenerate the golden fixtures of every crate with the reference
//! Python implementations (diffusers and friends) beside the same torch 2.11.0.
//!
//! Uses the managed environment's Python (`LPL_FIXTURE_PYTHON` overrides it), installs the
//! pinned reference packages into it when missing, then runs every
//! `crates/*/tests/fixtures/make_*.py` from the workspace root.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::setup::{lpl_home, workspace_root};

/// Reference packages the fixture scripts import, pinned. None of them may pull another
/// torch: the ones that would (through torchvision) are installed with `--no-deps` at the
/// versions that match torch 2.11.
const REFERENCE_PACKAGES: [&str; 4] =
    ["diffusers==0.42.0", "safetensors", "scipy", "tensorboard==2.21.0"];
const NO_DEPS_PACKAGES: [&str; 3] =
    ["torchvision==0.26.0", "pytorch-fid==0.3.0", "efficientnet-lite-pytorch==0.1.0"];

fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LPL_FIXTURE_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let install = lpl_home()?.join(format!("torch-{}", lpl_torch_build::REQUIRED_TORCH_VERSION));
    let exe = crate::python::venv_python(&install.join("venv"));
    if !exe.exists() {
        bail!(
            "no managed Python at {}; run `cargo xtask setup` without LIBTORCH, or set \
             LPL_FIXTURE_PYTHON to a Python with torch {}",
            exe.display(),
            lpl_torch_build::REQUIRED_TORCH_VERSION
        );
    }
    Ok(exe)
}

/// Installs the pinned reference packages into the managed Python when they are missing
/// (the fixtures and the PyTorch anchors of `cargo xtask bench` need them); returns it.
pub fn ensure_reference_packages() -> Result<PathBuf> {
    let python = python()?;
    let has_reference = Command::new(&python)
        .args([
            "-c",
            "import diffusers, safetensors, scipy, torchvision, pytorch_fid, efficientnet_lite_pytorch; assert diffusers.__version__ == '0.42.0'",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_reference {
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
            .args(REFERENCE_PACKAGES)
            .status()
            .with_context(|| format!("could not run {}", python.display()))?;
        if !status.success() {
            bail!("pip install {} failed ({status})", REFERENCE_PACKAGES.join(" "));
        }
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(NO_DEPS_PACKAGES)
            .status()
            .with_context(|| format!("could not run {}", python.display()))?;
        if !status.success() {
            bail!("pip install --no-deps {} failed ({status})", NO_DEPS_PACKAGES.join(" "));
        }
    }
    Ok(python)
}

pub fn run() -> Result<()> {
    let python = ensure_reference_packages()?;
    let torch_ok = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import torch; assert torch.__version__.split('+')[0] == '{}'",
                lpl_torch_build::REQUIRED_TORCH_VERSION
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !torch_ok {
        bail!(
            "the fixture environment no longer has torch {}: rerun `cargo xtask setup`",
            lpl_torch_build::REQUIRED_TORCH_VERSION
        );
    }
    let root = workspace_root();
    let mut scripts = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))?.flatten() {
        let Ok(files) = std::fs::read_dir(entry.path().join("tests/fixtures")) else { continue };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().to_string();
            if name.starts_with("make_") && name.ends_with(".py") {
                scripts.push(file.path());
            }
        }
    }
    scripts.sort();
    for script in scripts {
        eprintln!("running {}", script.display());
        let status = Command::new(&python)
            .arg(&script)
            .current_dir(&root)
            .status()
            .with_context(|| format!("could not run {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    Ok(())
}
