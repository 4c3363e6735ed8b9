//! A frame on a log scale with the fitted peak centres circled: the quick
//! look a beamline scientist wants before trusting a peak table.

use std::path::Path;

use ndarray::Array2;
use plotters::prelude::*;

use super::fit::Peak;
use crate::xpcs::plot::{draw_heat, fit_side};

/// Writes `frame` (rows × cols) with a circle at each peak of `peaks` that
/// belongs to frame `index`; the longer side becomes `side` pixels.
pub fn overlay(
    path: &Path,
    frame: &[f32],
    rows: usize,
    cols: usize,
    peaks: &[Peak],
    index: u32,
    side: u32,
) -> Result<(), String> {
    let fail = |e: String| format!("{}: cannot draw the overlay: {e}", path.display());
    let img =
        Array2::from_shape_vec((rows, cols), frame.to_vec()).map_err(|e| fail(e.to_string()))?;
    let size = fit_side(rows, cols, side);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    draw_heat(&root, &img, size, |v| (v.max(0.0) + 1.0).log10()).map_err(fail)?;
    let (sx, sy) = (size.0 as f64 / cols as f64, size.1 as f64 / rows as f64);
    let radius = ((4.0 * sx).round() as i32).max(3);
    for p in peaks.iter().filter(|p| p.frame == index) {
        let at = ((p.z_cen * sx) as i32, (p.y_cen * sy) as i32);
        root.draw(&Circle::new(at, radius, RED.stroke_width(1)))
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}
