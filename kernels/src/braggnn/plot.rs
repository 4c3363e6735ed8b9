//! The learning curve: validation error (mean and 95th percentile, px, log
//! scale) against epoch, the kept epoch marked — what tells a user whether
//! training had converged or needs more epochs or data.

use std::path::Path;

use plotters::prelude::*;

use super::train::Epoch;
use crate::xpcs::plot::{fail, font};

/// Writes the curve of `history` to `path`; `best` is the kept epoch's index.
pub fn learning_curve(path: &Path, history: &[Epoch], best: usize) -> Result<(), String> {
    if history.is_empty() {
        return Err(fail(path, "no epochs to plot"));
    }
    font()?;
    let root = BitMapBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let vals = history.iter().flat_map(|e| [e.val_mean_px, e.val_p95_px]);
    let (lo, hi) = vals.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = ((lo * 0.8).max(1e-4), (hi * 1.25).max(lo * 2.0));
    let last = history.len() as f64 - 1.0;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .caption("BraggNN validation error", ("sans-serif", 18))
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..last.max(1.0), (lo..hi).log_scale())
        .map_err(|e| fail(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("centre error, px")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()
        .map_err(|e| fail(path, e))?;
    for (label, colour, get) in [
        (
            "mean",
            BLUE,
            (|e: &Epoch| e.val_mean_px) as fn(&Epoch) -> f64,
        ),
        ("95th percentile", RED, |e: &Epoch| e.val_p95_px),
    ] {
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|e| (e.epoch as f64, get(e))),
                colour.stroke_width(2),
            ))
            .map_err(|e| fail(path, e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    let b = &history[best];
    chart
        .draw_series([Circle::new(
            (b.epoch as f64, b.val_mean_px),
            5,
            BLACK.filled(),
        )])
        .map_err(|e| fail(path, e))?
        .label(format!("kept: epoch {}, {:.4} px", b.epoch, b.val_mean_px))
        .legend(|(x, y)| Circle::new((x + 8, y), 4, BLACK.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))
}
