//! PNG plots of a benchmark run with `plotters` (bitmap backend, no system font
//! libraries): text is drawn with ab_glyph from a TrueType font read at run time, by
//! default DejaVu Sans from Debian's `fonts-dejavu-core` (`$STITCH_PLOT_FONT` overrides).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

/// Default font.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font as "sans-serif" (once per process).
///
/// # Errors
/// When the font file is missing or invalid.
pub fn load_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("STITCH_PLOT_FONT").unwrap_or_else(|_| FONT.into());
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("font {path}: {e} (apt-get install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("font {path}: not a TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One line of a plot: its name and (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Throughput (Mpps) against the number of flows, log x axis.
///
/// # Errors
/// Font or file errors.
pub fn throughput_vs_flows(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    load_font()?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1000.0, f64::max) * 2.0;
    let ymax = pts.map(|p| p.1).fold(0.1, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((500f64..xmax).log_scale(), 0f64..ymax)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("flows (installed stitches)")
        .y_desc("Mpps, < 0.1% loss")
        .draw()
        .map_err(err)?;
    for (i, (name, p)) in series.iter().enumerate() {
        let col = color(i);
        c.draw_series(LineSeries::new(p.iter().copied(), col.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(p.iter().map(|&xy| Circle::new(xy, 4, col.filled())))
            .map_err(err)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))
}

/// Latency CDFs: x = latency in µs (log), y = percentile.
///
/// # Errors
/// Font or file errors.
pub fn latency_cdf(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    load_font()?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmin = pts.clone().map(|p| p.0).fold(f64::MAX, f64::min).max(0.01) / 1.5;
    let xmax = pts.map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..100f64)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("latency (µs)")
        .y_desc("percentile")
        .draw()
        .map_err(err)?;
    for (i, (name, p)) in series.iter().enumerate() {
        let col = color(i);
        c.draw_series(LineSeries::new(p.iter().copied(), col.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_png_files() {
        if load_font().is_err() {
            // The font is a documented prerequisite (scripts/setup.sh installs it); say so.
            panic!("{FONT} missing: apt-get install fonts-dejavu-core");
        }
        let dir = std::env::temp_dir().join(format!("stitch-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = vec![(
            "a".to_string(),
            vec![(1000.0, 5.0), (100_000.0, 4.0), (1e6, 3.0)],
        )];
        throughput_vs_flows(&dir.join("t.png"), "t", &s).unwrap();
        let c = vec![(
            "b".to_string(),
            vec![(1.0, 0.0), (2.0, 50.0), (10.0, 99.0), (20.0, 100.0)],
        )];
        latency_cdf(&dir.join("c.png"), "c", &c).unwrap();
        for f in ["t.png", "c.png"] {
            let b = std::fs::read(dir.join(f)).unwrap();
            assert_eq!(&b[1..4], b"PNG");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
