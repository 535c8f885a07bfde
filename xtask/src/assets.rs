//! Data and test assets that come from package registries:
//! - Fashion-MNIST: the Debian package `dataset-fashion-mnist`
//!   (/usr/share/datasets/fashion-mnist), installed with apt-get when running as root;
//! - scikit-image's `astronaut.png` (512x512 RGB, public domain), taken once from the
//!   scikit-image wheel on PyPI into `$LPL_HOME/assets`.
//!
//! A failure is a warning that says what to install: the tests that need an asset say they
//! skipped, and the commands that need data fail with the same instructions.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::setup::lpl_home;

const SKIMAGE: &str = "scikit-image==0.26.0";

const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Installs `dataset-fashion-mnist` with apt-get when it is missing and we are root.
pub fn ensure_fashion_mnist() {
    if Path::new(FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz").is_file() {
        return;
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && apt) {
        eprintln!(
            "warning: Fashion-MNIST is not installed; run `apt-get install dataset-fashion-mnist` \
             (Debian/Ubuntu) or download its four IDX files and pass their directory"
        );
        return;
    }
    eprintln!("installing Fashion-MNIST (apt-get install dataset-fashion-mnist)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "dataset-fashion-mnist"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).stdin(Stdio::null()).status();
        if !install() {
            eprintln!(
                "warning: apt-get install dataset-fashion-mnist failed; tests that need it will be skipped"
            );
        }
    }
}

/// Makes sure every asset is present; prints a warning for each one that cannot be had.
pub fn ensure() -> Result<()> {
    ensure_fashion_mnist();
    let dir = lpl_home()?.join("assets");
    let target = dir.join("astronaut.png");
    if target.is_file() {
        return Ok(());
    }
    if let Err(e) = fetch_astronaut(&dir, &target) {
        eprintln!(
            "warning: could not fetch astronaut.png ({e:#}); the tests that use it will be skipped"
        );
    }
    Ok(())
}

fn fetch_astronaut(dir: &Path, target: &Path) -> Result<()> {
    let python = crate::python::find()?;
    let tmp = dir.join(format!("download.partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("fetching astronaut.png from the {SKIMAGE} wheel");
    let status = Command::new(&python.exe)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(SKIMAGE)
        .arg("-d")
        .arg(&tmp)
        .stdin(Stdio::null())
        .status()
        .context("could not run pip")?;
    if !status.success() {
        bail!("pip download {SKIMAGE} failed ({status})");
    }
    let partial = target.with_extension("png.partial");
    let script = "import glob, sys, zipfile\n\
                  wheel = glob.glob(sys.argv[1] + '/scikit_image-*.whl')[0]\n\
                  open(sys.argv[2], 'wb').write(zipfile.ZipFile(wheel).read('skimage/data/astronaut.png'))\n";
    let status = Command::new(&python.exe)
        .arg("-c")
        .arg(script)
        .arg(&tmp)
        .arg(&partial)
        .stdin(Stdio::null())
        .status()
        .context("could not run python")?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        bail!("extracting astronaut.png from the wheel failed ({status})");
    }
    std::fs::rename(&partial, target)
        .with_context(|| format!("cannot move {} into place", target.display()))
}
