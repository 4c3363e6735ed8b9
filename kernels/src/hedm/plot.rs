//! A frame on a log scale with the fitted peak centres circled: the quick
//! look a beamline scientist wants before trusting a peak table. Titled
//! with the file and frame, axes in detector pixels, a colour bar in
//! log₁₀(1 + counts).

use std::path::Path;

use ndarray::Array2;

use super::fit::Peak;
use crate::figure::{heat_figure, Heat, Scale};

/// Writes `frame` (rows × cols) of `file` with a circle at each peak of
/// `peaks` that belongs to frame `index`; the longer side becomes `side`
/// pixels. Returns the texts drawn.
#[allow(clippy::too_many_arguments)]
pub fn overlay(
    path: &Path,
    frame: &[f32],
    rows: usize,
    cols: usize,
    peaks: &[Peak],
    index: u32,
    side: u32,
    file: &str,
) -> Result<Vec<String>, String> {
    let img = Array2::from_shape_vec((rows, cols), frame.to_vec())
        .map_err(|e| format!("{}: cannot draw the overlay: {e}", path.display()))?;
    let marks: Vec<(f64, f64)> = peaks
        .iter()
        .filter(|p| p.frame == index)
        .map(|p| (p.y_cen, p.z_cen))
        .collect();
    let n = marks.len();
    heat_figure(
        path,
        &img,
        side,
        &Heat {
            title: format!(
                "{file}: frame {index}, {n} fitted peak{} (red circles)",
                if n == 1 { "" } else { "s" }
            ),
            x: "z (column, pixel)".into(),
            y: "y (row, pixel)".into(),
            quantity: "counts".into(),
            scale: Scale::Log10Plus1,
            y_up: false,
            marks,
        },
    )
}
