//! PNG figures a beamline scientist looks at first: g2(τ) per q bin with
//! its fit, the time-averaged SAXS image, and a two-time map.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::Array2;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::pipeline::BinFit;
use super::qbin::G2Result;

/// The figures of one results file, next to it: `STEM_g2.png` (multi-tau),
/// `STEM_saxs.png`, `STEM_c2.png` (first two-time map) and 256-pixel
/// thumbnails `STEM_g2_thumb.png` / `STEM_saxs_thumb.png` for catalogs.
/// `fits` draws the fitted curves over the points.
pub fn figures(results: &Path, out_dir: &Path, fits: &[BinFit]) -> Result<Vec<PathBuf>, String> {
    let c = super::results::read(results)?;
    let stem = results
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "xpcs".into());
    std::fs::create_dir_all(out_dir).map_err(|e| fail(out_dir, e))?;
    let name = |suffix: &str| out_dir.join(format!("{stem}_{suffix}.png"));
    let mut out = Vec::new();
    if let Some((tau_s, g)) = &c.multitau {
        g2_panels(&name("g2"), tau_s, g, &c.dq_values, fits, 300)?;
        g2_panels(&name("g2_thumb"), tau_s, g, &c.dq_values, fits, 64)?;
        out.extend([name("g2"), name("g2_thumb")]);
    }
    saxs_image(&name("saxs"), &c.saxs_2d, 512)?;
    saxs_image(&name("saxs_thumb"), &c.saxs_2d, 256)?;
    out.extend([name("saxs"), name("saxs_thumb")]);
    if let Some((_, c2)) = &c.first_c2 {
        twotime_map(&name("c2"), c2)?;
        out.push(name("c2"));
    }
    Ok(out)
}

/// Where the labels' font is looked for (Debian's fonts-dejavu-core first).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a sans-serif font once; plotters has no built-in font.
pub fn font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("BEAMFLOW_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path}: not a usable TrueType font"));
            }
        }
        Err(format!(
            "no font for plot labels: tried {} (install fonts-dejavu-core or set BEAMFLOW_FONT)",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
}

pub(crate) fn fail(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: cannot draw: {e}", path.display())
}

/// g2 against τ (seconds, log axis) for every dynamic bin, one panel each,
/// with the fitted single exponential drawn over the points.
pub fn g2_panels(
    path: &Path,
    tau_s: &[f64],
    g: &G2Result,
    q: &[f64],
    fits: &[BinFit],
    panel: u32,
) -> Result<(), String> {
    // Thumbnails (small panels) carry no text.
    let labelled = panel >= 150;
    if labelled {
        font()?;
    }
    let n_dq = g.g2.ncols();
    let bins: Vec<usize> = (0..n_dq)
        .filter(|&d| g.g2.column(d).iter().any(|&v| v != 0.0))
        .collect();
    if bins.is_empty() || tau_s.is_empty() {
        return Err(fail(path, "no non-empty q bin to plot"));
    }
    let cols = (bins.len() as f64).sqrt().ceil() as usize;
    let rows = bins.len().div_ceil(cols);
    let root = BitMapBackend::new(path, (panel * cols as u32, panel * 4 / 5 * rows as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let (t_lo, t_hi) = (tau_s[0] * 0.8, tau_s[tau_s.len() - 1] * 1.25);
    let areas = root.split_evenly((rows, cols));
    for (area, &d) in areas.iter().zip(&bins) {
        let col = g.g2.column(d);
        let (mut lo, mut hi) = col
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let pad = ((hi - lo) * 0.1).max(1e-3);
        lo -= pad;
        hi += pad;
        let title = match q.get(d) {
            Some(q) => format!("q = {q:.4} 1/Å"),
            None => format!("bin {}", d + 1),
        };
        let mut builder = ChartBuilder::on(area);
        builder.margin(if labelled { 6 } else { 2 });
        if labelled {
            builder
                .caption(title, ("sans-serif", 15))
                .x_label_area_size(28)
                .y_label_area_size(44);
        }
        let mut chart = builder
            .build_cartesian_2d((t_lo..t_hi).log_scale(), f64::from(lo)..f64::from(hi))
            .map_err(|e| fail(path, e))?;
        if labelled {
            chart
                .configure_mesh()
                .x_labels(4)
                .y_labels(5)
                .x_label_formatter(&|x| format!("{x:.0e}"))
                .y_label_formatter(&|y| format!("{y:.3}"))
                .label_style(("sans-serif", 11))
                .draw()
                .map_err(|e| fail(path, e))?;
        }
        chart
            .draw_series(
                tau_s
                    .iter()
                    .zip(col.iter())
                    .map(|(&t, &v)| Circle::new((t, f64::from(v)), 1 + panel / 150, BLUE.filled())),
            )
            .map_err(|e| fail(path, e))?;
        if let Some(f) = fits.iter().find(|f| f.dq as usize == d + 1) {
            let line = (0..=100).map(|i| {
                let t = t_lo * (t_hi / t_lo).powf(f64::from(i) / 100.0);
                (t, f.baseline + f.beta * (-2.0 * f.gamma * t).exp())
            });
            chart
                .draw_series(LineSeries::new(line, RED.stroke_width(2)))
                .map_err(|e| fail(path, e))?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

/// A false-colour map of `values` (row 0 at the top), `scale` applied first.
pub(crate) fn heat_map(
    path: &Path,
    values: &Array2<f32>,
    side: u32,
    scale: impl Fn(f32) -> f32,
) -> Result<(), String> {
    let (h, w) = values.dim();
    if h == 0 || w == 0 {
        return Err(fail(path, "empty image"));
    }
    let size = fit_side(h, w, side);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    draw_heat(&root, values, size, scale).map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))
}

/// Output size of an `h` × `w` image whose longer side becomes `side`.
pub(crate) fn fit_side(h: usize, w: usize, side: u32) -> (u32, u32) {
    if w >= h {
        (side, ((side as usize * h) / w).max(1) as u32)
    } else {
        (((side as usize * w) / h).max(1) as u32, side)
    }
}

/// Paints `values` (nearest pixel, `scale` applied, viridis over the finite
/// range) onto `root` of size `out`; other figures draw on top of it.
pub(crate) fn draw_heat<DB: plotters::prelude::DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    values: &Array2<f32>,
    out: (u32, u32),
    scale: impl Fn(f32) -> f32,
) -> Result<(), String> {
    let (h, w) = values.dim();
    let scaled = values.mapv(&scale);
    let finite = scaled.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (out_w, out_h) = out;
    for y in 0..out_h {
        for x in 0..out_w {
            let (r, c) = (
                y as usize * h / out_h as usize,
                x as usize * w / out_w as usize,
            );
            let v = scaled[[r, c]];
            let t = if v.is_finite() { (v - lo) / span } else { 0.0 };
            root.draw_pixel((x as i32, y as i32), &ViridisRGB::get_color(f64::from(t)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The time-averaged SAXS image on a log scale (zero pixels darkest).
pub fn saxs_image(path: &Path, img: &Array2<f32>, side: u32) -> Result<(), String> {
    let floor = img
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    heat_map(path, img, side, |v| v.max(floor).log10())
}

/// A two-time map C(t1, t2), mirrored from its stored upper triangle.
pub fn twotime_map(path: &Path, upper: &Array2<f32>) -> Result<(), String> {
    let mut full = upper.clone();
    for ((i, j), v) in full.indexed_iter_mut() {
        if i > j {
            *v = upper[[j, i]];
        }
    }
    heat_map(path, &full, 512, |v| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_maps_are_pngs_of_the_requested_size() {
        let t = tempfile::tempdir().unwrap();
        let img = Array2::from_shape_fn((40, 80), |(r, c)| (r * c) as f32);
        let p = t.path().join("saxs.png");
        saxs_image(&p, &img, 512).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (512, 256));
        let e = saxs_image(&t.path().join("none.png"), &Array2::zeros((0, 3)), 64).unwrap_err();
        assert!(e.contains("none.png") && e.contains("empty image"), "{e}");
    }
}
