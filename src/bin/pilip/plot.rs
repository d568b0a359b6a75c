//! Parity plots (predicted vs reference energies and forces) and line plots (MD energy traces, learning
//! curves) as PNG, drawn with `plotters`. Text uses DejaVu Sans embedded in the binary (the `dejavu` crate),
//! so plots look the same on any machine and need no system fonts.

use pilip::error::{Error, Result};
use pilip::frame::Frame;
use pilip::prediction::Prediction;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

const SIZE: (u32, u32) = (1200, 600);
const FONT: &str = "sans-serif";

/// How an axis maps values: linear, or logarithmic with decade ticks (only positive values are drawn).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Axis {
    Linear,
    Log,
}

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The embedded fonts are valid TrueType files; a failure would only make the text missing.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: drawing the plot: {e}", path.display()))
}

/// Energy per atom and force-component parity plots side by side, with MAE and RMSE in each panel.
pub fn parity_png(path: &Path, frames: &[Frame], preds: &[Prediction]) -> Result<()> {
    register_fonts();
    let energies: Vec<(f64, f64)> = frames
        .iter()
        .zip(preds)
        .filter_map(|(f, p)| f.energy.map(|e| (e / f.len() as f64, p.energy / f.len() as f64)))
        .collect();
    let forces: Vec<(f64, f64)> = frames
        .iter()
        .zip(preds)
        .filter_map(|(f, p)| f.forces.as_ref().map(|fr| (fr, &p.forces)))
        .flat_map(|(a, b)| a.iter().flatten().copied().zip(b.iter().flatten().copied()).collect::<Vec<_>>())
        .collect();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing_error(path, e))?;
    let panels = root.split_evenly((1, 2));
    parity_panel(&panels[0], &energies, "Energy per atom", "eV/atom", "meV/atom").map_err(|e| drawing_error(path, e))?;
    parity_panel(&panels[1], &forces, "Force components", "eV/Å", "meV/Å").map_err(|e| drawing_error(path, e))?;
    root.present().map_err(|e| drawing_error(path, e))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A line of text where a plot would be (nothing to draw).
fn notice(area: &Area, text: &str) -> std::result::Result<(), String> {
    let style = TextStyle::from((FONT, 24).into_font()).color(&BLACK);
    area.draw_text(text, &style, (60, 280)).map_err(|e| e.to_string())
}

fn parity_panel(area: &Area, pts: &[(f64, f64)], title: &str, unit: &str, milli: &str) -> std::result::Result<(), String> {
    let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    if pts.is_empty() {
        return notice(area, &format!("{title}: no labels"));
    }
    let lo = pts.iter().map(|p| p.0.min(p.1)).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.0.max(p.1)).fold(f64::NEG_INFINITY, f64::max);
    let pad = 0.05 * (hi - lo).max(1e-9);
    let range = (lo - pad)..(hi + pad);
    let n = pts.len() as f64;
    let mae = pts.iter().map(|p| (p.1 - p.0).abs()).sum::<f64>() / n;
    let rmse = (pts.iter().map(|p| (p.1 - p.0).powi(2)).sum::<f64>() / n).sqrt();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 26).into_font().style(FontStyle::Bold))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(range.clone(), range.clone())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!("reference ({unit})"))
        .y_desc(format!("predicted ({unit})"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new([(range.start, range.start), (range.end, range.end)], &RGBColor(150, 150, 150)))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 2, RGBColor(31, 119, 180).mix(0.6).filled())))
        .map_err(|e| e.to_string())?;
    let text = format!("MAE {:.2} {milli}   RMSE {:.2} {milli}   ({} values)", 1e3 * mae, 1e3 * rmse, pts.len());
    chart
        .draw_series(std::iter::once(Text::new(text, (range.start + 0.03 * (range.end - range.start), range.end - 0.04 * (range.end - range.start)), (FONT, 16))))
        .map_err(|e| e.to_string())?;
    Ok(())
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Several (x, y) series on shared axes with a legend, e.g. energy drift against time (one line per seed) or
/// errors against training-set size (log–log).
pub fn lines_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    axes: (Axis, Axis),
) -> Result<()> {
    register_fonts();
    let drawable = |p: &(f64, f64)| {
        p.0.is_finite() && p.1.is_finite() && (axes.0 == Axis::Linear || p.0 > 0.0) && (axes.1 == Axis::Linear || p.1 > 0.0)
    };
    let series: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, s)| (name.as_str(), s.iter().copied().filter(drawable).collect())).collect();
    let all = || series.iter().flat_map(|s| s.1.iter());
    let (xlo, xhi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ylo, yhi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing_error(path, e))?;
    if !xlo.is_finite() {
        notice(&root, &format!("{title}: no data")).map_err(|e| drawing_error(path, e))?;
        return root.present().map_err(|e| drawing_error(path, e));
    }
    let (x, y) = (padded(xlo, xhi, axes.0), padded(ylo, yhi, axes.1));
    let labels = Labels { title, x_label, y_label };
    let drawn = match axes {
        (Axis::Linear, Axis::Linear) => draw_lines(&root, x, y, &labels, &series),
        (Axis::Linear, Axis::Log) => draw_lines(&root, x, y.log_scale(), &labels, &series),
        (Axis::Log, Axis::Linear) => draw_lines(&root, x.log_scale(), y, &labels, &series),
        (Axis::Log, Axis::Log) => draw_lines(&root, x.log_scale(), y.log_scale(), &labels, &series),
    };
    drawn.map_err(|e| drawing_error(path, e))?;
    root.present().map_err(|e| drawing_error(path, e))
}

/// A data range with a margin: 5 % of the span on linear axes, a factor 1.2 on log axes.
fn padded(lo: f64, hi: f64, axis: Axis) -> Range<f64> {
    match axis {
        Axis::Linear => {
            let pad = 0.05 * (hi - lo).max(1e-12 * (1.0 + lo.abs()));
            (lo - pad)..(hi + pad)
        }
        Axis::Log => (lo / 1.2)..(hi * 1.2),
    }
}

struct Labels<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

fn draw_lines<X, Y>(root: &Area, x: X, y: Y, labels: &Labels, series: &[(&str, Vec<(f64, f64)>)]) -> std::result::Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, (FONT, 26).into_font().style(FontStyle::Bold))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(labels.x_label)
        .y_desc(labels.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(|e| e.to_string())?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if pts.len() <= 50 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
        let be = |k: usize| u32::from_be_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
        (be(16), be(20))
    }

    #[test]
    fn log_log_learning_curves_and_empty_plots_are_drawn() {
        let dir = std::env::temp_dir().join(format!("pilip-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let curve = |c: f64| vec![(10.0, c), (100.0, c / 3.0), (1000.0, c / 9.0), (0.0, 1.0), (50.0, f64::NAN)];
        let series = vec![("standard".to_string(), curve(300.0)), ("pitc".to_string(), curve(250.0))];
        let path = dir.join("curve.png");
        lines_png(&path, "Force RMSE", "training structures", "meV/Å", &series, (Axis::Log, Axis::Log)).unwrap();
        assert_eq!(png_size(&path), SIZE);
        let empty = dir.join("empty.png");
        lines_png(&empty, "nothing", "x", "y", &[("none".into(), vec![(-1.0, 2.0)])], (Axis::Log, Axis::Linear)).unwrap();
        assert_eq!(png_size(&empty), SIZE);
        // The drawn plot has far more ink than the "no data" one.
        assert!(std::fs::metadata(&path).unwrap().len() > 2 * std::fs::metadata(&empty).unwrap().len());
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(keep) = std::env::var("PILIP_KEEP_PLOT") {
            lines_png(Path::new(&keep), "Force RMSE", "training structures", "meV/Å", &series, (Axis::Log, Axis::Log)).unwrap();
        }
    }
}
