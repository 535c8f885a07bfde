//! The committed ablation report (`docs/ablation-default/report.html`, written by
//! `cargo xtask ablate`) renders in headless Chromium with every plot and sample grid decoded,
//! and the screenshot shows them. Without a Chromium the test fails, naming it (`cargo xtask
//! test` installs Debian's on CI; elsewhere `apt-get install chromium` or `LPL_CHROMIUM`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

#[path = "support/chromium.rs"]
mod chromium;

use std::path::Path;

#[test]
fn committed_report_renders_with_its_images() {
    let browser = lpl_test_assets::Asset::Chromium.require();
    let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ablation-default/report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    let inlined = html.matches("<img").count();
    // 3 parameterisations x (spectrum + loss plot + 2 sample grids)
    assert!(inlined >= 12, "{inlined} images in the report");
    let work = std::env::temp_dir().join(format!("lpl-report-render-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let page = chromium::render(&browser, &report, &work, 6000).unwrap();
    assert_eq!(page.images.len(), inlined, "every <img> reached the DOM");
    for (i, (w, h)) in page.images.iter().enumerate() {
        assert!(*w >= 64 && *h >= 64, "image {i} did not decode: {w}x{h}");
    }
    // the same page with its images' data removed: what the images add to the screenshot
    let stripped = work.join("stripped.html");
    let mut without = String::with_capacity(html.len());
    let mut rest = html.as_str();
    while let Some(i) = rest.find("data:image/png;base64,") {
        without.push_str(&rest[..i]);
        let end = rest[i..].find('"').map_or(rest.len(), |j| i + j);
        rest = &rest[end..];
    }
    without.push_str(rest);
    std::fs::write(&stripped, without).unwrap();
    let bare = chromium::render(&browser, &stripped, &work.join("bare"), 6000).unwrap();
    assert!(bare.images.iter().all(|&(w, _)| w == 0), "stripped images do not decode");
    let (ink, bare_ink) = (chromium::ink(&page.screenshot), chromium::ink(&bare.screenshot));
    let (colour, bare_colour) =
        (chromium::coloured(&page.screenshot), chromium::coloured(&bare.screenshot));
    println!("ink {ink:.3} (without images {bare_ink:.3}), coloured px {colour} ({bare_colour})");
    assert!(ink > 2.0 * bare_ink && ink > 0.05, "images add ink: {ink} vs {bare_ink}");
    // the plots' coloured lines and legends (the bare page has only the coloured signs)
    assert!(colour > bare_colour + 5_000, "plot colours: {colour} vs {bare_colour}");
    let keep = work.join("screenshot.png");
    println!("screenshot: {}", keep.display());
}
