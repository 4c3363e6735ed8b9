//! The learning curve: validation error (mean and 95th percentile, px, log
//! scale) against epoch, the kept epoch marked — what tells a user whether
//! training had converged or needs more epochs or data. Ticks on the log
//! axis are labelled even when it spans less than a decade, epochs are
//! whole numbers, and the legend sits below the curves.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::train::Epoch;
use crate::figure::{self, fail, Key, LEGEND_H, TITLE_H};

const SIZE: (u32, u32) = (720, 460);

/// Writes the curve of `history` to `path`; `best` is the kept epoch's
/// index. Returns the texts drawn.
pub fn learning_curve(path: &Path, history: &[Epoch], best: usize) -> Result<Vec<String>, String> {
    if history.is_empty() {
        return Err(fail(path, "no epochs to plot"));
    }
    figure::font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let texts = draw(&root, history, best).map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(texts)
}

/// The error axis: the curves' range, a little wider, never empty.
fn error_range(history: &[Epoch]) -> (f64, f64) {
    let vals = history.iter().flat_map(|e| [e.val_mean_px, e.val_p95_px]);
    let (lo, hi) = vals
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (1e-3, 1.0);
    }
    ((lo * 0.8).max(1e-4), (hi * 1.25).max(lo * 2.0))
}

/// Whole-number epoch ticks, about eight of them: the figure's round
/// ticks, those between whole epochs left out.
fn epoch_ticks(first: i64, last: i64) -> Vec<i64> {
    figure::nice_ticks(first as f64, last as f64, 8)
        .into_iter()
        .filter(|t| (t - t.round()).abs() < 1e-9)
        .map(|t| t.round() as i64)
        .collect()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    history: &[Epoch],
    best: usize,
) -> Result<Vec<String>, String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (top, rest) = root.split_vertically(TITLE_H);
    let (body, strip) = rest.split_vertically(SIZE.1 - TITLE_H - LEGEND_H);
    let title = "BraggNN validation error".to_string();
    figure::title_band(&top, &title)?;
    let (lo, hi) = error_range(history);
    let first = history.iter().map(|e| e.epoch as i64).min().unwrap_or(0);
    let last = history.iter().map(|e| e.epoch as i64).max().unwrap_or(0);
    let x_end = last.max(first + 1);
    let mut chart = ChartBuilder::on(&body)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (first..x_end).with_key_points(epoch_ticks(first, x_end)),
            figure::ticked((lo..hi).log_scale(), figure::log_ticks(lo, hi)),
        )
        .map_err(e)?;
    let (x_desc, y_desc) = ("epoch", "centre error (px)");
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|y| figure::tick_label(*y))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    type Curve = (&'static str, RGBColor, fn(&Epoch) -> f64);
    let curves: [Curve; 2] = [
        ("mean", BLUE, |e| e.val_mean_px),
        ("95th percentile", RED, |e| e.val_p95_px),
    ];
    for (_, colour, get) in curves {
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|e| (e.epoch as i64, get(e))),
                colour.stroke_width(2),
            ))
            .map_err(e)?;
    }
    let b = &history[best.min(history.len() - 1)];
    chart
        .draw_series([Circle::new(
            (b.epoch as i64, b.val_mean_px),
            5,
            BLACK.filled(),
        )])
        .map_err(e)?;
    let kept = format!(
        "kept: epoch {}, mean {} px",
        b.epoch,
        figure::tick_label(b.val_mean_px)
    );
    let entries = [
        (Key::Line(BLUE), curves[0].0.to_string()),
        (Key::Line(RED), curves[1].0.to_string()),
        (Key::Dot(BLACK), kept),
    ];
    figure::legend(&strip, &entries)?;
    let mut texts = vec![title, x_desc.to_string(), y_desc.to_string()];
    texts.extend(entries.into_iter().map(|(_, t)| t));
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::tests::inked;

    fn history(errors: &[f64]) -> Vec<Epoch> {
        errors
            .iter()
            .enumerate()
            .map(|(i, &m)| Epoch {
                epoch: i + 1,
                val_mean_px: m,
                val_p95_px: 2.0 * m,
                ..Epoch::default()
            })
            .collect()
    }

    #[test]
    fn epochs_tick_at_whole_numbers() {
        assert_eq!(epoch_ticks(1, 3), [1, 2, 3]);
        assert_eq!(epoch_ticks(0, 40), [0, 5, 10, 15, 20, 25, 30, 35, 40]);
        assert_eq!(epoch_ticks(1, 100), [20, 40, 60, 80, 100]);
    }

    /// Three epochs whose errors span less than a decade: whole-number
    /// epochs, at least three labelled ticks on the error axis, the
    /// legend in its strip below the plot (inked there), the kept epoch
    /// named.
    #[test]
    fn the_learning_curve_reads_with_few_epochs_and_a_short_log_axis() {
        figure::font().unwrap();
        let h = history(&[0.3, 0.2, 0.15]);
        let (lo, hi) = error_range(&h);
        assert!(figure::log_ticks(lo, hi).len() >= 3, "{lo} {hi}");
        let mut buf = vec![0u8; (3 * SIZE.0 * SIZE.1) as usize];
        let texts = {
            let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
            let t = draw(&root, &h, 2).unwrap();
            root.present().unwrap();
            t
        };
        assert_eq!(
            texts,
            [
                "BraggNN validation error",
                "epoch",
                "centre error (px)",
                "mean",
                "95th percentile",
                "kept: epoch 3, mean 0.15 px"
            ]
        );
        let (w, hgt) = SIZE;
        assert!(
            inked(&buf, w, (0, w), (hgt - LEGEND_H, hgt)) > 50,
            "legend below"
        );
        // The y tick labels: text in the label column beside the plot.
        assert!(inked(&buf, w, (20, 68), (TITLE_H + 10, hgt - LEGEND_H - 50)) > 30);
    }
}
