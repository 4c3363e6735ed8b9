//! Quick looks at a reconstruction: object amplitude and phase.

use std::path::Path;

use ndarray::Array2;

use super::model::Field;
use crate::xpcs::plot::heat_map;

/// Writes the object's amplitude and phase (radians) as PNGs, the longer
/// side 768 px.
pub fn object(amplitude: &Path, phase: &Path, obj: &Field) -> Result<(), String> {
    let img = |f: fn(&rustfft::num_complex::Complex32) -> f32| {
        Array2::from_shape_vec((obj.rows, obj.cols), obj.data.iter().map(f).collect())
            .map_err(|e| e.to_string())
    };
    heat_map(amplitude, &img(|v| v.norm())?, 768, |v| v)?;
    heat_map(phase, &img(|v| v.arg())?, 768, |v| v)
}
