//! The Python side of the bootstrap: finding an interpreter, creating the managed virtual
//! environment and installing `torch` into it with pip. Every failure names what is missing
//! and how to get it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// An interpreter that ran and reported its version.
pub struct Python {
    pub exe: PathBuf,
    pub version: (u32, u32),
}

fn output(cmd: &mut Command) -> Option<(bool, String, String)> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

fn probe(exe: &Path) -> Option<Python> {
    let (ok, stdout, _) = output(
        Command::new(exe).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
    )?;
    if !ok {
        return None;
    }
    let (major, minor) = stdout.split_once('.')?;
    Some(Python { exe: exe.to_path_buf(), version: (major.parse().ok()?, minor.parse().ok()?) })
}

/// `LPL_PYTHON` if set, else `python3`, else `python` from PATH. torch 2.11 needs
/// Python >= 3.10.
pub fn find() -> Result<Python> {
    let candidates: Vec<PathBuf> = match std::env::var_os("LPL_PYTHON") {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => vec!["python3".into(), "python".into()],
    };
    let python = candidates.iter().find_map(|c| probe(c)).with_context(|| {
        format!(
            "no Python 3 interpreter found (tried {}); install Python >= 3.10 \
             (Debian/Ubuntu: apt-get install python3 python3-venv) or set LPL_PYTHON, \
             or point LIBTORCH at an unpacked libtorch 2.11.0",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })?;
    if python.version.0 != 3 || python.version.1 < 10 {
        bail!(
            "{} is Python {}.{}; torch 2.11.0 needs Python >= 3.10 (set LPL_PYTHON to another interpreter)",
            python.exe.display(),
            python.version.0,
            python.version.1
        );
    }
    Ok(python)
}

/// The interpreter inside a virtual environment created at `venv`.
pub fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// `python -m venv <dir>`, with a clear error when the venv module or ensurepip is absent.
pub fn create_venv(python: &Python, dir: &Path) -> Result<PathBuf> {
    let (ok, _, stderr) = output(Command::new(&python.exe).arg("-m").arg("venv").arg(dir))
        .with_context(|| format!("could not run {}", python.exe.display()))?;
    if !ok {
        let hint = if stderr.contains("ensurepip") || stderr.contains("No module named venv") {
            format!(
                "the venv module (with ensurepip) is missing; Debian/Ubuntu: apt-get install python3-venv \
                 (or python{}.{}-venv)",
                python.version.0, python.version.1
            )
        } else {
            "python -m venv failed".to_string()
        };
        bail!("cannot create a virtual environment at {}: {hint}\n{stderr}", dir.display());
    }
    let exe = venv_python(dir);
    let (pip_ok, _, pip_err) = output(Command::new(&exe).args(["-m", "pip", "--version"]))
        .with_context(|| format!("could not run {}", exe.display()))?;
    if !pip_ok {
        bail!(
            "pip is missing from the virtual environment at {} ({pip_err}); install pip for {} \
             (Debian/Ubuntu: apt-get install python3-pip python3-venv)",
            dir.display(),
            python.exe.display()
        );
    }
    Ok(exe)
}

/// `pip install torch==<version>` into the environment of `venv_python`, streaming pip's
/// own output so a long download shows progress.
pub fn pip_install_torch(venv_python: &Path, version: &str) -> Result<()> {
    let status = Command::new(venv_python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
        .arg(format!("torch=={version}"))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not run {}", venv_python.display()))?;
    if !status.success() {
        bail!(
            "pip install torch=={version} failed ({status}); check network access to PyPI, \
             or point LIBTORCH at an unpacked libtorch {version}"
        );
    }
    Ok(())
}

/// The directory of the installed `torch` package (platlib of the environment).
pub fn torch_package_dir(venv_python: &Path) -> Result<PathBuf> {
    let (ok, stdout, stderr) = output(
        Command::new(venv_python)
            .args(["-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"]),
    )
    .with_context(|| format!("could not run {}", venv_python.display()))?;
    if !ok {
        bail!("cannot query site-packages of {}: {stderr}", venv_python.display());
    }
    Ok(PathBuf::from(stdout).join("torch"))
}
