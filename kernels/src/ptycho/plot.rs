//! Quick looks at a reconstruction: object amplitude and phase, each
//! titled with its data file, in object pixels, with a colour bar.

use std::path::Path;

use ndarray::Array2;

use super::model::Field;
use crate::figure::{heat_figure, Heat, Scale};

/// Writes the object's amplitude (|O|, unitless) and phase (radians) of a
/// reconstruction of `file` as PNGs, the longer side 768 px. Returns the
/// texts drawn on each.
pub fn object(
    amplitude: &Path,
    phase: &Path,
    obj: &Field,
    file: &str,
) -> Result<[Vec<String>; 2], String> {
    let img = |f: fn(&rustfft::num_complex::Complex32) -> f32| {
        Array2::from_shape_vec((obj.rows, obj.cols), obj.data.iter().map(f).collect())
            .map_err(|e| e.to_string())
    };
    let heat = |what: &str, quantity: &str| Heat {
        title: format!("{file}: object {what}"),
        x: "x (object pixel)".into(),
        y: "y (object pixel)".into(),
        quantity: quantity.into(),
        scale: Scale::Linear,
        y_up: false,
        marks: vec![],
    };
    Ok([
        heat_figure(
            amplitude,
            &img(|v| v.norm())?,
            768,
            &heat("amplitude", "amplitude |O|"),
        )?,
        heat_figure(
            phase,
            &img(|v| v.arg())?,
            768,
            &heat("phase", "phase (rad)"),
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustfft::num_complex::Complex32;

    #[test]
    fn amplitude_and_phase_name_their_file_and_units() {
        let t = tempfile::tempdir().unwrap();
        let obj = Field {
            rows: 20,
            cols: 30,
            data: (0..600)
                .map(|i| Complex32::from_polar(1.0, i as f32 * 0.01))
                .collect(),
        };
        let (a, p) = (t.path().join("a.png"), t.path().join("p.png"));
        let [ta, tp] = object(&a, &p, &obj, "scan7.h5").unwrap();
        assert_eq!(ta[0], "scan7.h5: object amplitude");
        assert_eq!(ta[3], "amplitude |O|");
        assert_eq!(tp[0], "scan7.h5: object phase");
        assert_eq!(
            tp[1..],
            ["x (object pixel)", "y (object pixel)", "phase (rad)"]
        );
        assert!(std::fs::metadata(&a).unwrap().len() > 1000);
        assert!(std::fs::metadata(&p).unwrap().len() > 1000);
    }
}
