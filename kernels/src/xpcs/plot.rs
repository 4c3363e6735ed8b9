//! PNG figures a beamline scientist looks at first: g2(τ) per q bin with
//! its fit, the time-averaged SAXS image, and a two-time map — each titled
//! with the results file it comes from, axes and colour bars in units.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::pipeline::BinFit;
use super::qbin::G2Result;
use crate::figure::{self, fail, Heat, Key, Scale, LEGEND_H, TITLE_H};

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
    let file = results
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| stem.clone());
    std::fs::create_dir_all(out_dir).map_err(|e| fail(out_dir, e))?;
    let name = |suffix: &str| out_dir.join(format!("{stem}_{suffix}.png"));
    let mut out = Vec::new();
    if let Some((tau_s, g)) = &c.multitau {
        let fig = G2Figure {
            tau_s,
            g,
            q: &c.dq_values,
            fits,
            file: &file,
        };
        g2_panels(&name("g2"), &fig, 300)?;
        g2_panels(&name("g2_thumb"), &fig, 64)?;
        out.extend([name("g2"), name("g2_thumb")]);
    }
    saxs_image(&name("saxs"), &c.saxs_2d, &file)?;
    figure::thumbnail(&name("saxs_thumb"), &c.saxs_2d, 256, Scale::Log10)?;
    out.extend([name("saxs"), name("saxs_thumb")]);
    if let Some((dq, c2)) = &c.first_c2 {
        let q = (*dq as usize)
            .checked_sub(1)
            .and_then(|i| c.dq_values.get(i));
        twotime_map(&name("c2"), c2, *dq, q.copied(), &file)?;
        out.push(name("c2"));
    }
    Ok(out)
}

/// Panels at least this wide carry text; thumbnails do not.
const LABELLED: u32 = 150;

/// g2 against τ (seconds, log axis) for every dynamic bin, one panel each:
/// the points with their ±1σ error bars, the fitted single exponential
/// over them (dashed and the panel marked where the decay is not resolved
/// within the measured delays), `file` in the title, a legend below.
/// Returns the texts drawn.
pub fn g2_panels(path: &Path, fig: &G2Figure, panel: u32) -> Result<Vec<String>, String> {
    let labelled = panel >= LABELLED;
    if labelled {
        figure::font()?;
    }
    let bins = plotted_bins(fig.g);
    if bins.is_empty() || fig.tau_s.is_empty() {
        return Err(fail(path, "no non-empty q bin to plot"));
    }
    let root = BitMapBackend::new(path, g2_size(bins.len(), panel)).into_drawing_area();
    let texts = draw_g2(&root, fig, panel).map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(texts)
}

/// The bins with any non-zero g2 (an empty bin has no pixels).
fn plotted_bins(g: &G2Result) -> Vec<usize> {
    (0..g.g2.ncols())
        .filter(|&d| g.g2.column(d).iter().any(|&v| v != 0.0))
        .collect()
}

/// Columns and rows of the panel grid for `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil() as usize;
    (cols, n.div_ceil(cols))
}

fn g2_size(n: usize, panel: u32) -> (u32, u32) {
    let (cols, rows) = grid(n);
    let bands = if panel >= LABELLED {
        TITLE_H + LEGEND_H
    } else {
        0
    };
    (panel * cols as u32, panel * 4 / 5 * rows as u32 + bands)
}

const DATA: RGBColor = RGBColor(31, 86, 180);
const ERROR_BAR: RGBColor = RGBColor(140, 170, 220);
const FIT: RGBColor = RGBColor(200, 30, 30);
const UNRESOLVED: RGBColor = RGBColor(120, 120, 120);

/// What a g2 figure shows: τ in seconds, g2 and its errors per bin, q
/// per bin (Å⁻¹), the fits, and the results file's name for the title.
pub struct G2Figure<'a> {
    pub tau_s: &'a [f64],
    pub g: &'a G2Result,
    pub q: &'a [f64],
    pub fits: &'a [BinFit],
    pub file: &'a str,
}

fn draw_g2<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &G2Figure,
    panel: u32,
) -> Result<Vec<String>, String> {
    let G2Figure {
        tau_s,
        g,
        q,
        fits,
        file,
    } = *fig;
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let labelled = panel >= LABELLED;
    root.fill(&WHITE).map_err(e)?;
    let bins = plotted_bins(g);
    let fit_of = |d: usize| fits.iter().find(|f| f.dq as usize == d + 1);
    let mut texts = Vec::new();
    let body = if labelled {
        let (top, rest) = root.split_vertically(TITLE_H);
        let (_, h) = rest.dim_in_pixel();
        let (body, strip) = rest.split_vertically(h - LEGEND_H);
        let title = format!("{file}: g2(τ) per q bin");
        figure::title_band(&top, &title)?;
        let mut entries = vec![
            (Key::Dot(DATA), "data ± 1σ".to_string()),
            (Key::Line(FIT), "fit: baseline + β·exp(−2Γτ)".to_string()),
        ];
        if bins.iter().any(|&d| fit_of(d).is_some_and(|f| !f.resolved)) {
            entries.push((
                Key::Dashed(UNRESOLVED),
                "unresolved: the decay lies outside the measured τ".to_string(),
            ));
        }
        figure::legend(&strip, &entries)?;
        texts.push(title);
        texts.extend(entries.into_iter().map(|(_, t)| t));
        body
    } else {
        root.clone()
    };
    let (t_lo, t_hi) = (tau_s[0] * 0.8, tau_s[tau_s.len() - 1] * 1.25);
    let (cols, rows) = grid(bins.len());
    let areas = body.split_evenly((rows, cols));
    for (area, &d) in areas.iter().zip(&bins) {
        let col = g.g2.column(d);
        let err = g.g2_err.column(d);
        let (lo, hi) = g2_range(col.iter().copied(), err.iter().copied());
        let fit = fit_of(d);
        let unresolved = fit.is_some_and(|f| !f.resolved);
        let mut builder = ChartBuilder::on(area);
        builder.margin(if labelled { 6 } else { 2 });
        if labelled {
            let mut caption = match q.get(d) {
                Some(q) => format!("q = {} Å⁻¹", figure::tick_label(*q)),
                None => format!("bin {}", d + 1),
            };
            if unresolved {
                caption.push_str(" · unresolved");
            }
            let colour = if unresolved { UNRESOLVED } else { BLACK };
            builder
                .caption(&caption, ("sans-serif", 14).into_font().color(&colour))
                .x_label_area_size(40)
                .y_label_area_size(54);
            texts.push(caption);
        }
        let mut chart = builder
            .build_cartesian_2d(
                figure::ticked((t_lo..t_hi).log_scale(), figure::log_ticks(t_lo, t_hi)),
                lo..hi,
            )
            .map_err(e)?;
        if labelled {
            chart
                .configure_mesh()
                .x_desc("τ (s)")
                .y_desc("g2")
                .y_labels(5)
                .x_label_formatter(&|x| format!("{x:.0e}"))
                .y_label_formatter(&|y| figure::tick_label(*y))
                .label_style(("sans-serif", 11))
                .axis_desc_style(("sans-serif", 12))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e)?;
        }
        let points = || {
            tau_s
                .iter()
                .zip(col.iter().zip(err.iter()))
                .map(|(&t, (&v, &s))| (t, f64::from(v), f64::from(s)))
        };
        if labelled {
            chart
                .draw_series(points().filter(|p| p.2 > 0.0).map(|(t, v, s)| {
                    PathElement::new([(t, v - s), (t, v + s)], ERROR_BAR.stroke_width(1))
                }))
                .map_err(e)?;
        }
        chart
            .draw_series(
                points().map(|(t, v, _)| Circle::new((t, v), 1 + panel / 150, DATA.filled())),
            )
            .map_err(e)?;
        if let Some(f) = fit {
            let line = (0..=100).map(|i| {
                let t = t_lo * (t_hi / t_lo).powf(f64::from(i) / 100.0);
                (t, f.baseline + f.beta * (-2.0 * f.gamma * t).exp())
            });
            if unresolved {
                chart
                    .draw_series(DashedLineSeries::new(
                        line,
                        6,
                        4,
                        UNRESOLVED.stroke_width(2),
                    ))
                    .map_err(e)?;
            } else {
                chart
                    .draw_series(LineSeries::new(line, FIT.stroke_width(2)))
                    .map_err(e)?;
            }
        }
    }
    if labelled {
        texts.extend(["τ (s)".to_string(), "g2".to_string()]);
    }
    Ok(texts)
}

/// The g2 axis: the points padded by a tenth, widened by their error bars
/// as far as the points' own spread (the last delays' bars, from few
/// frame pairs, would otherwise flatten every curve).
fn g2_range(values: impl Iterator<Item = f32>, errs: impl Iterator<Item = f32>) -> (f64, f64) {
    let pairs: Vec<(f64, f64)> = values
        .zip(errs)
        .map(|(v, s)| (f64::from(v), f64::from(s).max(0.0)))
        .filter(|(v, _)| v.is_finite())
        .collect();
    let (lo, hi) = pairs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (v, _)| {
            (a.min(*v), b.max(*v))
        });
    if !lo.is_finite() {
        return (0.0, 2.0);
    }
    let span = (hi - lo).max(1e-3);
    let (lo, hi) = pairs.iter().fold((lo, hi), |(a, b), (v, s)| {
        let s = s.min(span);
        (a.min(v - s), b.max(v + s))
    });
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// The time-averaged SAXS image on a log scale (zero pixels darkest).
pub fn saxs_image(path: &Path, img: &Array2<f32>, file: &str) -> Result<Vec<String>, String> {
    figure::heat_figure(
        path,
        img,
        512,
        &Heat {
            title: format!("{file}: time-averaged scattering"),
            x: "column (pixel)".into(),
            y: "row (pixel)".into(),
            quantity: "intensity (counts/frame)".into(),
            scale: Scale::Log10,
            y_up: false,
            marks: vec![],
        },
    )
}

/// A two-time map C2(t₁, t₂) of q bin `dq` (at `q`, Å⁻¹, where known),
/// mirrored from its stored upper triangle, t₁ = t₂ rising to the right.
pub fn twotime_map(
    path: &Path,
    upper: &Array2<f32>,
    dq: u32,
    q: Option<f64>,
    file: &str,
) -> Result<Vec<String>, String> {
    let mut full = upper.clone();
    for ((i, j), v) in full.indexed_iter_mut() {
        if i > j {
            *v = upper[[j, i]];
        }
    }
    let at = q
        .map(|q| format!(", q = {} Å⁻¹", figure::tick_label(q)))
        .unwrap_or_default();
    figure::heat_figure(
        path,
        &full,
        512,
        &Heat {
            title: format!("{file}: two-time C2, q bin {dq}{at}"),
            x: "t₁ (frame)".into(),
            y: "t₂ (frame)".into(),
            quantity: "C2(t₁, t₂)".into(),
            scale: Scale::Linear,
            y_up: true,
            marks: vec![],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::tests::inked;

    fn g2(tau: &[f64], gamma: [f64; 2]) -> G2Result {
        let t = tau.len();
        G2Result {
            tau: (1..=t as u64).collect(),
            g2: Array2::from_shape_fn((t, 2), |(i, d)| {
                (1.0 + 0.2 * (-2.0 * gamma[d] * tau[i]).exp()) as f32
            }),
            g2_err: Array2::from_elem((t, 2), 0.01),
        }
    }

    fn fit(dq: u32, gamma: f64, resolved: bool) -> BinFit {
        BinFit {
            dq,
            q: 0.001 * f64::from(dq),
            pixels: 100,
            gamma,
            beta: 0.2,
            baseline: 1.0,
            chi2: 1.0,
            resolved,
        }
    }

    /// The g2 figure names its file, its axes with units, each panel's q,
    /// the legend's data/fit/unresolved entries, and draws them: the
    /// title band and the legend strip hold text, the panels error bars.
    #[test]
    fn the_g2_figure_labels_axes_fits_and_unresolved_bins() {
        figure::font().unwrap();
        let tau: Vec<f64> = (0..40).map(|i| 1e-3 * 1.25f64.powi(i)).collect();
        let g = g2(&tau, [20.0, 1e-4]);
        let fits = [fit(1, 20.0, true), fit(2, 1e-4, false)];
        let size = g2_size(2, 300);
        let mut buf = vec![0u8; (3 * size.0 * size.1) as usize];
        let texts = {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            let fig = G2Figure {
                tau_s: &tau,
                g: &g,
                q: &[0.001, 0.002],
                fits: &fits,
                file: "A001.hdf",
            };
            let t = draw_g2(&root, &fig, 300).unwrap();
            root.present().unwrap();
            t
        };
        for want in [
            "A001.hdf: g2(τ) per q bin",
            "data ± 1σ",
            "fit: baseline + β·exp(−2Γτ)",
            "unresolved: the decay lies outside the measured τ",
            "q = 0.001 Å⁻¹",
            "q = 0.002 Å⁻¹ · unresolved",
            "τ (s)",
            "g2",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
        }
        let (w, h) = size;
        assert!(inked(&buf, w, (0, w), (0, TITLE_H)) > 50, "title drawn");
        assert!(
            inked(&buf, w, (0, w), (h - LEGEND_H, h)) > 50,
            "legend drawn"
        );
        let bars = (0..w * h)
            .filter(|i| {
                let i = 3 * *i as usize;
                (buf[i], buf[i + 1], buf[i + 2]) == (ERROR_BAR.0, ERROR_BAR.1, ERROR_BAR.2)
            })
            .count();
        assert!(bars > 20, "error bars drawn: {bars} pixels");
        // A thumbnail carries no text and no bands.
        assert_eq!(g2_size(2, 64), (128, 51));
    }

    #[test]
    fn error_bars_widen_the_axis_only_as_far_as_the_points_spread() {
        let (lo, hi) = g2_range([1.0f32, 1.2].into_iter(), [0.01f32, 50.0].into_iter());
        assert!(lo > 0.7 && hi < 1.5, "{lo} {hi}");
        let (lo, hi) = g2_range([1.0f32, 1.2].into_iter(), [0.05f32, 0.05].into_iter());
        assert!(lo < 0.95 && hi > 1.25, "{lo} {hi}");
    }

    #[test]
    fn saxs_and_two_time_figures_say_what_they_show() {
        let t = tempfile::tempdir().unwrap();
        let img = Array2::from_shape_fn((40, 80), |(r, c)| (r * c) as f32);
        let texts = saxs_image(&t.path().join("saxs.png"), &img, "A001.hdf").unwrap();
        assert_eq!(
            texts,
            [
                "A001.hdf: time-averaged scattering",
                "column (pixel)",
                "row (pixel)",
                "log₁₀ intensity (counts/frame)"
            ]
        );
        let bytes = std::fs::read(t.path().join("saxs.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let c2 = Array2::from_shape_fn((30, 30), |(i, j)| (i + j) as f32);
        let texts =
            twotime_map(&t.path().join("c2.png"), &c2, 3, Some(0.00421), "A001.hdf").unwrap();
        assert_eq!(texts[0], "A001.hdf: two-time C2, q bin 3, q = 0.00421 Å⁻¹");
        assert_eq!(texts[3], "C2(t₁, t₂)");
        let e = saxs_image(&t.path().join("none.png"), &Array2::zeros((0, 3)), "x").unwrap_err();
        assert!(e.contains("none.png") && e.contains("empty image"), "{e}");
    }
}
