//! Rendering an HTML report in headless Chromium for tests: a full-page screenshot, and the
//! decoded size of every `<img>` as the browser saw it (read back from the DOM).
//!
//! Chromium is found by `lpl_test_assets::Asset::Chromium` (`$LPL_CHROMIUM`, else `chromium`
//! and relatives on `PATH`; `cargo xtask test` installs Debian's `chromium` on CI).

use std::path::Path;
use std::process::Command;

/// What the browser made of a page.
pub struct Rendered {
    /// `naturalWidth x naturalHeight` of every `<img>`, in document order (0 x 0: broken).
    pub images: Vec<(u32, u32)>,
    /// The page at 1280 px width.
    pub screenshot: image::RgbImage,
}

/// Headless flags for a machine without network, GPU or display (and running as root).
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Renders `html` (a self-contained file) with `chromium`; scratch files go to `work`.
pub fn render(chromium: &Path, html: &Path, work: &Path, height: u32) -> Result<Rendered, String> {
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(html).map_err(|e| format!("{}: {e}", html.display()))?;
    // a copy that writes each image's decoded size into the DOM once everything has loaded
    let probe = "<script>window.addEventListener('load', () => { \
        document.body.setAttribute('data-images', Array.from(document.images) \
        .map(i => i.naturalWidth + 'x' + i.naturalHeight).join(',')); });</script>";
    let probed = match text.rfind("</body>") {
        Some(i) => format!("{}{probe}{}", &text[..i], &text[i..]),
        None => format!("{text}{probe}"),
    };
    let page = work.join("probed.html");
    std::fs::write(&page, probed).map_err(|e| e.to_string())?;
    let url = format!("file://{}", page.display());
    let out = browser(chromium, &work.join("profile-dom"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .map_err(|e| format!("{}: {e}", chromium.display()))?;
    let dom = String::from_utf8_lossy(&out.stdout);
    let attr = dom
        .split_once("data-images=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_string())
        .ok_or_else(|| {
            format!(
                "no data-images attribute in the DOM dump (did the page load?): {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )
        })?;
    let images = attr
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (w, h) = s.split_once('x').unwrap_or(("0", "0"));
            (w.parse().unwrap_or(0), h.parse().unwrap_or(0))
        })
        .collect();
    let png = work.join("screenshot.png");
    let _ = std::fs::remove_file(&png);
    let shot = browser(chromium, &work.join("profile-shot"))
        .arg(format!("--window-size=1280,{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .map_err(|e| format!("{}: {e}", chromium.display()))?;
    let screenshot = image::open(&png)
        .map_err(|e| {
            format!(
                "no screenshot {}: {e}; {}",
                png.display(),
                String::from_utf8_lossy(&shot.stderr).lines().last().unwrap_or("")
            )
        })?
        .to_rgb8();
    Ok(Rendered { images, screenshot })
}

/// Fraction of pixels that are not near-white (text, tables, plots, images).
pub fn ink(img: &image::RgbImage) -> f64 {
    let dark = img.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    dark as f64 / (img.width() * img.height()) as f64
}

/// Pixels with a clearly coloured (not grey) value: plot lines, legend swatches, signs.
pub fn coloured(img: &image::RgbImage) -> usize {
    img.pixels()
        .filter(|p| {
            let [r, g, b] = p.0.map(i32::from);
            (r - g).abs().max((g - b).abs()).max((r - b).abs()) > 60
        })
        .count()
}
