//! Line plots as PNG (power spectra, loss curves), drawn with plotters into an RGB buffer
//! and written with `image`.
//!
//! Text needs a TrueType font: the first of `$LPL_FONT`, DejaVu Sans, Liberation Sans or
//! Noto Sans found on the machine is used. Without one the plot is still drawn (axes, grid,
//! lines) but without titles, tick labels and legend, and a warning says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::frechet::StatsError;

/// One line: a legend name and its `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (all y must then be positive).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a system font for plotters once; whether one is available.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("LPL_FONT").map(PathBuf::from);
        let found = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .find_map(|p| std::fs::read(&p).ok());
        let ok = found.is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        });
        if !ok {
            tracing::warn!("no TrueType font found (set LPL_FONT): plots are drawn without text");
        }
        ok
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A short tick label: up to 3 significant digits, scientific outside [1e-3, 1e5).
fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&v.abs()) {
        return format!("{v:.1e}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

fn draw_err(e: impl std::fmt::Display) -> StatsError {
    StatsError::Input(format!("plot: {e}"))
}

impl LinePlot {
    /// Draws the plot at `width x height` into an RGB8 buffer.
    pub fn render(&self, width: u32, height: u32) -> Result<Vec<u8>, StatsError> {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in
            points.filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
        {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            return Err(StatsError::Input(format!("plot `{}`: no finite points", self.title)));
        }
        if x1 == x0 {
            x1 = x0 + 1.0;
        }
        let (y0, y1) = if self.log_y {
            (y0 / 1.5, y1 * 1.5)
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-12);
            (y0 - pad, y1 + pad)
        };
        let text = font_available();
        let mut buffer = vec![255u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let mut builder = ChartBuilder::on(&root);
            builder.margin(12);
            if text {
                builder
                    .caption(&self.title, ("sans-serif", 20))
                    .x_label_area_size(40)
                    .y_label_area_size(60);
            } else {
                builder.x_label_area_size(8).y_label_area_size(8);
            }
            macro_rules! finish {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    let mut mesh = chart.configure_mesh();
                    if text {
                        mesh.x_desc(&self.x_label)
                            .y_desc(&self.y_label)
                            .x_labels(8)
                            .y_labels(8)
                            .x_label_formatter(&|v| tick(*v))
                            .y_label_formatter(&|v| tick(*v));
                    } else {
                        mesh.x_labels(0).y_labels(0);
                    }
                    mesh.draw().map_err(draw_err)?;
                    for (i, s) in self.series.iter().enumerate() {
                        let color = COLORS[i % COLORS.len()];
                        let pts = s.points.iter().copied().filter(|(x, y)| {
                            x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0)
                        });
                        let pts: Vec<(f64, f64)> = pts.collect();
                        // a marker on each point when there are few (one point draws no line)
                        if pts.len() < 12 {
                            chart
                                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                                .map_err(draw_err)?;
                        }
                        let drawn = chart
                            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                            .map_err(draw_err)?;
                        if text {
                            drawn.label(s.name.clone()).legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                            });
                        }
                    }
                    if text {
                        chart
                            .configure_series_labels()
                            .position(SeriesLabelPosition::UpperRight)
                            .background_style(WHITE.mix(0.85))
                            .border_style(BLACK)
                            .draw()
                            .map_err(draw_err)?;
                    }
                }};
            }
            if self.log_y {
                finish!(
                    builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(draw_err)?
                );
            } else {
                finish!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(draw_err)?);
            }
            root.present().map_err(draw_err)?;
        }
        Ok(buffer)
    }

    /// Renders at 720x450 and writes a PNG (atomically: a temporary file, then a rename).
    pub fn save_png(&self, path: &Path) -> Result<(), StatsError> {
        let (w, h) = (720, 450);
        let buffer = self.render(w, h)?;
        let img = image::RgbImage::from_raw(w, h, buffer)
            .ok_or_else(|| StatsError::Input("plot buffer size".into()))?;
        let tmp = path.with_extension("png.partial");
        let io = |e: image::ImageError| StatsError::Input(format!("{}: {e}", path.display()));
        img.save_with_format(&tmp, image::ImageFormat::Png).map_err(io)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| StatsError::Input(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::tick;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(0.125), "0.125");
        assert_eq!(tick(2000.0), "2000");
        assert_eq!(tick(12.5), "12.5");
        assert_eq!(tick(0.0001), "1.0e-4");
        assert_eq!(tick(0.0), "0");
    }
}
