//! Test assets that come from package registries, fetched once into `$LPL_HOME/assets`:
//! scikit-image's `astronaut.png` (512x512 RGB, public domain), taken from the scikit-image
//! wheel on PyPI. A failure is a warning: the tests that need an asset say they skipped.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::setup::lpl_home;

const SKIMAGE: &str = "scikit-image==0.26.0";

/// Makes sure every asset is present; prints a warning for each one that cannot be had.
pub fn ensure() -> Result<()> {
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
