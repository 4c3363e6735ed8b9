//! Reconstruction error against a known object.
//!
//! A ptychographic object is determined up to a global phase and, when the
//! probe is retrieved too, a global scale (traded with the probe) and a
//! linear phase ramp (a shift of the far field traded between object and
//! probe). The error is therefore taken after removing these, on the
//! illuminated region only (Fienup's error with a complex scalar):
//!
//! ```text
//! NRMSE = min_{γ∈ℂ, a, b} ‖ γ·e^{i(a·x + b·y)} O − O_true ‖ / ‖ O_true ‖   over the mask
//! ```
//!
//! The ramp is estimated without phase unwrapping, from the mean phase
//! step of `O_true·conj(O)` between neighbouring pixels of the mask; γ is
//! then the least-squares scalar `Σ O_true·conj(O') / Σ |O'|²`. With a known
//! probe γ is 1 up to the noise. The phase RMS is reported alongside
//! (radians, amplitude-weighted by the truth).

use rustfft::num_complex::Complex32;

use super::model::{illumination, Field, Probe};

/// Errors of a reconstruction.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Error {
    pub nrmse: f64,
    pub phase_rms: f64,
}

/// Compares `obj` with `truth` over `mask` (row-major, same shape).
pub fn object_error(obj: &Field, truth: &Field, mask: &[bool]) -> Result<Error, String> {
    if (obj.rows, obj.cols) != (truth.rows, truth.cols) || mask.len() != obj.data.len() {
        return Err(format!(
            "object {}×{} vs truth {}×{} (mask {})",
            obj.rows,
            obj.cols,
            truth.rows,
            truth.cols,
            mask.len()
        ));
    }
    let (rows, cols) = (obj.rows, obj.cols);
    let z = |i: usize| {
        let (t, o) = (truth.data[i], obj.data[i]);
        num(t) * num(o).conj()
    };
    // Mean phase step along columns (a) and rows (b).
    let (mut sa, mut sb) = (C64::default(), C64::default());
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            if !mask[i] {
                continue;
            }
            if c + 1 < cols && mask[i + 1] {
                sa += z(i + 1) * z(i).conj();
            }
            if r + 1 < rows && mask[i + cols] {
                sb += z(i + cols) * z(i).conj();
            }
        }
    }
    let (a, b) = (sa.arg(), sb.arg());
    let ramp = |i: usize| C64::from_polar(1.0, a * (i % cols) as f64 + b * (i / cols) as f64);
    let (mut cross, mut own) = (C64::default(), 0.0);
    for i in (0..obj.data.len()).filter(|&i| mask[i]) {
        let o = num(obj.data[i]) * ramp(i);
        cross += num(truth.data[i]) * o.conj();
        own += o.norm_sqr();
    }
    let g = if own > 0.0 {
        cross / own
    } else {
        C64::new(1.0, 0.0)
    };
    let (mut err, mut norm, mut ph, mut w) = (0.0, 0.0, 0.0, 0.0);
    for i in (0..obj.data.len()).filter(|&i| mask[i]) {
        let t = num(truth.data[i]);
        let o = num(obj.data[i]) * ramp(i) * g;
        err += (o - t).norm_sqr();
        norm += t.norm_sqr();
        let d = (t * o.conj()).arg();
        ph += t.norm_sqr() * d * d;
        w += t.norm_sqr();
    }
    if norm == 0.0 {
        return Err("the mask selects no object pixel with a non-zero truth".into());
    }
    Ok(Error {
        nrmse: (err / norm).sqrt(),
        phase_rms: (ph / w).sqrt(),
    })
}

type C64 = rustfft::num_complex::Complex64;

fn num(v: Complex32) -> C64 {
    C64::new(f64::from(v.re), f64::from(v.im))
}

/// Pixels where the summed probe intensity over all positions reaches
/// `frac` of its maximum: the region the data say anything about.
pub fn illuminated(
    probe: &Probe,
    corners: &[(usize, usize)],
    shape: (usize, usize),
    frac: f32,
) -> Vec<bool> {
    let illum = illumination(probe, corners, shape);
    let max = illum.iter().copied().fold(0.0, f32::max);
    illum
        .iter()
        .map(|&v| max > 0.0 && v >= frac * max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_phase_and_ramp_do_not_count() {
        let (rows, cols) = (24, 30);
        let truth = Field {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|i| {
                    Complex32::from_polar(
                        0.5 + 0.4 * ((i % 7) as f32 / 7.0),
                        (i as f32 * 0.3).sin(),
                    )
                })
                .collect(),
        };
        let mask: Vec<bool> = (0..rows * cols)
            .map(|i| i % cols > 2 && i / cols > 1)
            .collect();
        let shifted = Field {
            data: truth
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v * Complex32::from_polar(
                        1.0,
                        0.7 + 0.05 * (i % cols) as f32 - 0.03 * (i / cols) as f32,
                    )
                })
                .collect(),
            ..truth.clone()
        };
        let e = object_error(&shifted, &truth, &mask).unwrap();
        assert!(e.nrmse < 1e-5 && e.phase_rms < 1e-5, "{e:?}");
        // Nor does a global scale; but a local error does.
        let mut off = Field {
            data: truth.data.iter().map(|v| v * 1.7).collect(),
            ..truth.clone()
        };
        assert!(object_error(&off, &truth, &mask).unwrap().nrmse < 1e-5);
        off.data[5 * cols + 10] += Complex32::new(0.5, 0.0);
        let e = object_error(&off, &truth, &mask).unwrap();
        assert!(e.nrmse > 1e-3, "{e:?}");
    }
}
