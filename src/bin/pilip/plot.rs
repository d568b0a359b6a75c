//! Parity plots (predicted vs reference energies and forces) and line plots (MD energy traces) as PNG, drawn with a built-in 5×7 bitmap font so
//! that no system fonts or plotting libraries are needed.

use pilip::error::{Error, Result};
use pilip::frame::Frame;
use pilip::prediction::Prediction;
use std::path::Path;

const W: usize = 1200;
const H: usize = 600;

struct Canvas {
    px: Vec<[u8; 3]>,
}

/// 5×7 glyphs, one row per byte (bit 4 = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        _ => [0; 7],
    }
}

impl Canvas {
    fn new() -> Self {
        Canvas { px: vec![[255, 255, 255]; W * H] }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            self.px[y as usize * W + x as usize] = c;
        }
    }
    fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for k in 0..=n {
            self.set(x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n, c);
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (r, row) in g.iter().enumerate() {
                for col in 0..5 {
                    if row & (16 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (k as i64 * 6 + col) * scale + dx, y + r as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        for dy in -1..=1 {
            for dx in -1..=1 {
                self.set(x + dx, y + dy, c);
            }
        }
    }
}

/// One panel: square axes at (x0, y0) of size `size`, points (reference, predicted).
fn panel(cv: &mut Canvas, x0: i64, y0: i64, size: i64, pts: &[(f64, f64)], title: &str, unit: &str) {
    let black = [0, 0, 0];
    if pts.is_empty() {
        cv.text(x0, y0 + size / 2, &format!("{title}: NO LABELS"), 2, black);
        return;
    }
    let lo = pts.iter().map(|p| p.0.min(p.1)).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.0.max(p.1)).fold(f64::NEG_INFINITY, f64::max);
    let pad = 0.05 * (hi - lo).max(1e-12);
    let (lo, hi) = (lo - pad, hi + pad);
    let to = |v: f64| ((v - lo) / (hi - lo) * size as f64) as i64;
    for k in 0..=size {
        cv.set(x0 + k, y0 + size, black);
        cv.set(x0, y0 + size - k, black);
        cv.set(x0 + k, y0, [200, 200, 200]);
        cv.set(x0 + size, y0 + size - k, [200, 200, 200]);
    }
    cv.line(x0, y0 + size, x0 + size, y0, [160, 160, 160]);
    for t in 0..=4 {
        let v = lo + (hi - lo) * t as f64 / 4.0;
        let p = size * t / 4;
        let label = format!("{v:.3}");
        cv.line(x0 + p, y0 + size, x0 + p, y0 + size + 6, black);
        cv.text(x0 + p - 15, y0 + size + 10, &label, 1, black);
        cv.line(x0 - 6, y0 + size - p, x0, y0 + size - p, black);
        cv.text(x0 - 8 - 6 * label.len() as i64, y0 + size - p - 3, &label, 1, black);
    }
    for &(r, q) in pts {
        cv.dot(x0 + to(r), y0 + size - to(q), [31, 119, 180]);
    }
    let n = pts.len() as f64;
    let mae = pts.iter().map(|p| (p.1 - p.0).abs()).sum::<f64>() / n;
    let rmse = (pts.iter().map(|p| (p.1 - p.0).powi(2)).sum::<f64>() / n).sqrt();
    cv.text(x0, y0 - 40, title, 2, black);
    cv.text(x0 + 8, y0 + 8, &format!("MAE {:.2} MEV{}  RMSE {:.2} MEV{}", 1e3 * mae, unit, 1e3 * rmse, unit), 1, black);
    cv.text(x0 + size / 2 - 60, y0 + size + 28, &format!("REFERENCE (EV{unit})"), 1, black);
    cv.text(x0 - 90, y0 - 14, &format!("PREDICTED (EV{unit})"), 1, black);
}

/// Energy per atom and force-component parity plots side by side.
pub fn parity_png(path: &Path, frames: &[Frame], preds: &[Prediction]) -> Result<()> {
    let mut cv = Canvas::new();
    let e: Vec<(f64, f64)> = frames
        .iter()
        .zip(preds)
        .filter_map(|(f, p)| f.energy.map(|e| (e / f.len() as f64, p.energy / f.len() as f64)))
        .collect();
    let fpts: Vec<(f64, f64)> = frames
        .iter()
        .zip(preds)
        .filter_map(|(f, p)| f.forces.as_ref().map(|fr| (fr, &p.forces)))
        .flat_map(|(a, b)| a.iter().flatten().copied().zip(b.iter().flatten().copied()).collect::<Vec<_>>())
        .collect();
    panel(&mut cv, 110, 80, 440, &e, "ENERGY PER ATOM", "/ATOM");
    panel(&mut cv, 710, 80, 440, &fpts, "FORCE COMPONENTS", "/A");
    cv.save(path)
}

const COLORS: [[u8; 3]; 6] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75]];

/// Line plot of several (x, y) series on shared axes (e.g. energy drift against time, one line per seed).
pub fn lines_png(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let mut cv = Canvas::new();
    let black = [0, 0, 0];
    let (x0, y0, w, h) = (140i64, 80i64, 900i64, 420i64);
    let pts = || series.iter().flat_map(|s| s.1.iter().filter(|p| p.0.is_finite() && p.1.is_finite()));
    let (xlo, xhi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ylo, yhi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !xlo.is_finite() {
        cv.text(x0, y0 + h / 2, &format!("{title}: NO DATA"), 2, black);
        return cv.save(path);
    }
    let xhi = if xhi > xlo { xhi } else { xlo + 1.0 };
    let pad = 0.05 * (yhi - ylo).max(1e-12);
    let (ylo, yhi) = (ylo - pad, yhi + pad);
    let tx = |x: f64| x0 + ((x - xlo) / (xhi - xlo) * w as f64) as i64;
    let ty = |y: f64| y0 + h - ((y - ylo) / (yhi - ylo) * h as f64) as i64;
    cv.line(x0, y0 + h, x0 + w, y0 + h, black);
    cv.line(x0, y0, x0, y0 + h, black);
    for t in 0..=4 {
        let (xv, yv) = (xlo + (xhi - xlo) * t as f64 / 4.0, ylo + (yhi - ylo) * t as f64 / 4.0);
        let (xl, yl) = (format!("{xv:.3}"), format!("{yv:.2e}"));
        cv.line(tx(xv), y0 + h, tx(xv), y0 + h + 6, black);
        cv.text(tx(xv) - 15, y0 + h + 10, &xl, 1, black);
        cv.line(x0 - 6, ty(yv), x0, ty(yv), black);
        cv.text(x0 - 10 - 6 * yl.len() as i64, ty(yv) - 3, &yl, 1, black);
    }
    for (k, (label, s)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        for win in s.windows(2) {
            if win.iter().all(|p| p.0.is_finite() && p.1.is_finite()) {
                cv.line(tx(win[0].0), ty(win[0].1), tx(win[1].0), ty(win[1].1), c);
            }
        }
        cv.text(x0 + w + 20, y0 + 20 * k as i64, label, 1, c);
    }
    cv.text(x0, y0 - 40, title, 2, black);
    cv.text(x0 + w / 2 - 40, y0 + h + 30, x_label, 1, black);
    cv.text(x0 - 100, y0 - 14, y_label, 1, black);
    cv.save(path)
}

impl Canvas {
    fn save(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = self.px.iter().flatten().copied().collect();
        enc.write_header()
            .and_then(|mut w| w.write_image_data(&data))
            .map_err(|e| Error::invalid(format!("{}: writing PNG: {e}", path.display())))
    }
}
