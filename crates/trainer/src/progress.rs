//! Progress bars for long loops (hidden automatically when stderr is not a terminal). All
//! bars share one `MultiProgress`, so an ablation's overall bar stays above the bar of the
//! run in progress.

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// A bar over `len` steps with a free-text message, below the bars already shown.
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(len));
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}<{eta_precise}] {wide_bar} {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}
