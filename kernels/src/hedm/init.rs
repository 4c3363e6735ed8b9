//! Starting values and bounds of a region's joint fit, as MIDAS sets them
//! (`fit2DPeaks`): background from the threshold, each peak at its maximum
//! pixel, widths from the second moment of the pixels nearest to it.

use super::model::{n_params, SLOTS};

/// Fitting coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Geometry {
    /// (U, V) = (row, col) in pixels.
    Cartesian,
    /// (U, V) = (R px, Eta deg) about the beam centre (row, col). Eta is
    /// MIDAS's: the angle from the +col axis, negative for pixels above the
    /// centre (smaller row), in (−180°, 180°].
    Polar { row0: f64, col0: f64 },
}

impl Geometry {
    /// (U, V) of pixel (row, col).
    #[inline]
    pub fn coords(self, row: f64, col: f64) -> (f64, f64) {
        match self {
            Geometry::Cartesian => (row, col),
            Geometry::Polar { row0, col0 } => {
                let y = row0 - row;
                let z = col - col0;
                let r = (y * y + z * z).sqrt();
                (r, eta_deg(y, z, r))
            }
        }
    }

    /// (row, col) of fitting coordinates (U, V).
    pub fn pixel(self, u: f64, v: f64) -> (f64, f64) {
        match self {
            Geometry::Cartesian => (u, v),
            Geometry::Polar { row0, col0 } => {
                // The inverse of `coords`: row0 − row = −R sin Eta, col − col0 = R cos Eta.
                let e = v.to_radians();
                (row0 + u * e.sin(), col0 + u * e.cos())
            }
        }
    }
}

/// MIDAS's `CalcEtaAngle(y, z)`: `acos(z / |(y, z)|)` in degrees, negated for y > 0.
#[inline]
fn eta_deg(y: f64, z: f64, r: f64) -> f64 {
    if r == 0.0 {
        return 0.0;
    }
    let a = (z / r).clamp(-1.0, 1.0).acos().to_degrees();
    if y > 0.0 {
        -a
    } else {
        a
    }
}

/// Initial parameters and their bounds for a region.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    pub x: Vec<f64>,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
}

/// `u`, `v`, `z`: the region's pixels (fitting coordinates, intensities);
/// `maxima`: indices into them of the peaks' maximum pixels; `thresh`: the
/// threshold that made the region.
pub fn start(
    geom: Geometry,
    u: &[f64],
    v: &[f64],
    z: &[f64],
    maxima: &[usize],
    thresh: f64,
) -> Start {
    let n = maxima.len();
    let np = n_params(n);
    let (mut x, mut lo, mut hi) = (vec![0.0; np], vec![0.0; np], vec![0.0; np]);
    x[0] = thresh / 2.0;
    lo[0] = 0.0;
    hi[0] = thresh;
    let (umin, umax) = min_max(u);
    let (vmin, vmax) = min_max(v);
    let max_u_width = ((umax - umin) / 2.0 + 1.0).max(0.1);
    let max_v_width = match geom {
        Geometry::Cartesian => (vmax - vmin) / 2.0 + 1.0,
        Geometry::Polar { .. } => {
            let mut w = (vmax - vmin) / 2.0 + (2.0 / (umax + umin)).atan().to_degrees();
            if vmax - vmin > 180.0 {
                w -= 180.0;
            }
            w
        }
    }
    .max(0.1);
    for (j, &m) in maxima.iter().enumerate() {
        let (mu, mv) = (u[m], v[m]);
        // Second moment about the maximum of the pixels nearest to it,
        // weighted by how far they stand above half the threshold.
        let (mut w, mut su, mut sv, mut count) = (0.0, 0.0, 0.0, 0usize);
        for i in 0..z.len() {
            if nearest(u[i], v[i], u, v, maxima) != j {
                continue;
            }
            count += 1;
            let wi = z[i] - thresh / 2.0;
            if wi > 0.0 {
                w += wi;
                su += wi * (u[i] - mu) * (u[i] - mu);
                sv += wi * (v[i] - mv) * (v[i] - mv);
            }
        }
        let (sig_u, sig_v) = if w > 0.0 {
            (
                (su / w).sqrt().clamp(0.1, max_u_width),
                (sv / w).sqrt().clamp(0.1, max_v_width),
            )
        } else {
            let s = (count.max(1) as f64 / n as f64).sqrt();
            (s.min(max_u_width), s.min(max_v_width))
        };
        let (v_lo, v_hi) = match geom {
            Geometry::Cartesian => (mv - 1.0, mv + 1.0),
            Geometry::Polar { .. } => {
                let d = (1.0 / mu.max(1e-9)).atan().to_degrees();
                (mv - d, mv + d)
            }
        };
        let b = 1 + SLOTS * j;
        let peak = z[m];
        let init = [peak, mu, mv, 0.5, sig_u, sig_u, sig_v, sig_v];
        let los = [peak / 2.0, mu - 1.0, v_lo, 0.0, 0.01, 0.01, 0.005, 0.005];
        let his = [
            5.0 * peak,
            mu + 1.0,
            v_hi,
            1.0,
            2.0 * max_u_width,
            2.0 * max_u_width,
            2.0 * max_v_width,
            2.0 * max_v_width,
        ];
        x[b..b + SLOTS].copy_from_slice(&init);
        lo[b..b + SLOTS].copy_from_slice(&los);
        hi[b..b + SLOTS].copy_from_slice(&his);
    }
    for k in 0..np {
        x[k] = x[k].clamp(lo[k], hi[k]);
    }
    Start { x, lo, hi }
}

/// Index (into `maxima`) of the maximum nearest to (u, v); ties go to the first.
fn nearest(u: f64, v: f64, pu: &[f64], pv: &[f64], maxima: &[usize]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (j, &m) in maxima.iter().enumerate() {
        let d = (u - pu[m]).powi(2) + (v - pv[m]).powi(2);
        if d < best.0 {
            best = (d, j);
        }
    }
    best.1
}

fn min_max(a: &[f64]) -> (f64, f64) {
    a.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}
