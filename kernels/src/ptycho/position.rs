//! Scan-position correction, gradient type (PtychoShelves, tike, pty-chi).
//!
//! Stages drift, encoders lag and fly scans smear: positions in a file are
//! off by a pixel or more, and an object reconstructed at wrong positions
//! is blurred where the overlap disagrees. Each epoch, every position gets
//! the least-squares shift `s = (dy, dx)` that best explains its exit-wave
//! correction χ by moving the patch under the probe, `ψ(s) ≈ P·(O_j +
//! s·∇O_j)`:
//!
//! ```text
//! minimise Σ |χ − P·(dy·∂_y O_j + dx·∂_x O_j)|²  over (dy, dx)
//! ```
//!
//! (first probe mode, as pty-chi; solved for both components together,
//! see [`shift`]).
//!
//! Patches are cut at the rounded positions (pty-chi's `NEAREST` patch
//! interpolation), so a shift is measured from the patch's pixel: the
//! shifts are added up, and when a position crosses a half pixel its patch
//! moves and the position is set to the new pixel's centre. Without that
//! reset a position stalls on the half pixel where its patch moved (once
//! the patch is right the shifts fall to ~0) and its patch flips back and
//! forth with every small move. And since noisy shifts that add up make a
//! random walk, each position is also pulled gently towards its patch's
//! pixel ([`PULL`]); without it, positions that had found their pixel
//! wander off again in long runs.
//!
//! The moves of an epoch are applied together: times the step (pty-chi's
//! 0.3), each component clipped at 10× its median absolute deviation over
//! the positions (one bad estimate does not throw a position away) and at
//! 0.1 px per epoch, and the mean move removed — a common shift of all
//! positions is the same as a shifted object, so the scan's mean position
//! is kept. The derivatives are central differences on the patch, which
//! cost no FFTs (pty-chi's default Fourier differentiation costs four per
//! position); the patch edges, where they are one-sided, lie outside the
//! probe's footprint.

use rustfft::num_complex::Complex32;

/// How positions are corrected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositionOptions {
    /// First epoch (0-based) with corrections: the object needs a few
    /// epochs before its gradients say anything.
    pub start: usize,
    /// Fraction of each least-squares shift applied (pty-chi's step size).
    pub step: f64,
    /// Largest move of one position per epoch, px.
    pub limit: f64,
}

impl Default for PositionOptions {
    fn default() -> Self {
        PositionOptions {
            start: 5,
            step: 0.3,
            limit: 0.1,
        }
    }
}

/// Pull of each position towards its patch's pixel, per epoch (see the
/// module doc). Measured on `medium` with ±2 px errors (rPIE, 100
/// epochs): patches on the true pixel 202/256 without it, 241 at 0.03, 232
/// at 0.05, 62 at 0.15 (strong enough to hold positions on a wrong pixel).
const PULL: f64 = 0.03;

/// Clip at this many median absolute deviations (pty-chi's factor).
const MAD_CLIP: f64 = 10.0;

/// The least-squares shift (dy, dx), px, of one position from its object
/// patch `oj`, the probe's first mode `p` and that mode's exit-wave
/// correction `chi` (all n×n, row-major). A positive shift moves the patch
/// to larger row/column indices.
///
/// Both components are solved jointly (a 2×2 system). pty-chi solves each
/// alone, which is biased wherever the object's y and x derivatives are
/// correlated — a phase ramp, or edges running diagonally: a shift along
/// one axis is then partly explained by the other.
pub fn shift(oj: &[Complex32], p: &[Complex32], chi: &[Complex32], n: usize) -> [f64; 2] {
    let at = |r: usize, c: usize| oj[r * n + c];
    // Σ|a|², Σ|b|², Re Σ conj(a)b, Re Σ conj(a)χ, Re Σ conj(b)χ with
    // a = P·∂_y O, b = P·∂_x O.
    let mut s = [0f64; 5];
    for r in 0..n {
        let (r0, r1) = (r.saturating_sub(1), (r + 1).min(n - 1));
        for c in 0..n {
            let (c0, c1) = (c.saturating_sub(1), (c + 1).min(n - 1));
            let i = r * n + c;
            let a = p[i] * (at(r1, c) - at(r0, c)) / (r1 - r0) as f32;
            let b = p[i] * (at(r, c1) - at(r, c0)) / (c1 - c0) as f32;
            s[0] += f64::from(a.norm_sqr());
            s[1] += f64::from(b.norm_sqr());
            s[2] += f64::from((a.conj() * b).re);
            s[3] += f64::from((a.conj() * chi[i]).re);
            s[4] += f64::from((b.conj() * chi[i]).re);
        }
    }
    let det = s[0] * s[1] - s[2] * s[2];
    if det > 1e-6 * s[0] * s[1] {
        [
            (s[1] * s[3] - s[2] * s[4]) / det,
            (s[0] * s[4] - s[2] * s[3]) / det,
        ]
    } else {
        // Derivatives (nearly) parallel or zero: each axis alone.
        let f = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        [f(s[3], s[0]), f(s[4], s[1])]
    }
}

/// Refined positions: top-left corners (row, col) as real numbers.
#[derive(Clone, Debug)]
pub struct Positions {
    pub corners: Vec<[f64; 2]>,
    /// This epoch's least-squares shifts, filled by the engines.
    pub proposed: Vec<[f64; 2]>,
}

/// What one correction did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Applied {
    /// Largest and mean move this epoch, px.
    pub max: f64,
    pub mean: f64,
    /// Positions whose patch moved to another pixel.
    pub moved_patches: usize,
}

impl Positions {
    pub fn new(corners: &[(usize, usize)]) -> Positions {
        Positions {
            corners: corners.iter().map(|&(r, c)| [r as f64, c as f64]).collect(),
            proposed: vec![[0.0; 2]; corners.len()],
        }
    }

    /// Applies this epoch's proposals (see the module doc) and writes the
    /// rounded corners into `patches`, keeping every n×n patch inside the
    /// `shape` object.
    pub fn apply(
        &mut self,
        o: &PositionOptions,
        n: usize,
        shape: (usize, usize),
        patches: &mut [(usize, usize)],
    ) -> Applied {
        let len = self.corners.len();
        if len == 0 {
            return Applied::default();
        }
        let mut moves = vec![[0f64; 2]; len];
        for k in 0..2 {
            let d: Vec<f64> = (0..len)
                .map(|j| {
                    let patch = if k == 0 { patches[j].0 } else { patches[j].1 } as f64;
                    o.step * self.proposed[j][k] + PULL * (patch - self.corners[j][k])
                })
                .collect();
            let limit = (MAD_CLIP * mad(&d)).min(o.limit);
            for (m, v) in moves.iter_mut().zip(&d) {
                m[k] = v.clamp(-limit, limit);
            }
            let mean = moves.iter().map(|m| m[k]).sum::<f64>() / len as f64;
            moves.iter_mut().for_each(|m| m[k] -= mean);
        }
        let mut a = Applied::default();
        let hi = [(shape.0 - n) as f64, (shape.1 - n) as f64];
        for (j, m) in moves.iter().enumerate() {
            let c = &mut self.corners[j];
            for k in 0..2 {
                c[k] = (c[k] + m[k]).clamp(0.0, hi[k]);
            }
            let step = m[0].hypot(m[1]);
            a.max = a.max.max(step);
            a.mean += step / len as f64;
            let rounded = (c[0].round() as usize, c[1].round() as usize);
            if rounded != patches[j] {
                patches[j] = rounded;
                *c = [rounded.0 as f64, rounded.1 as f64];
                a.moved_patches += 1;
            }
        }
        self.proposed.iter_mut().for_each(|p| *p = [0.0; 2]);
        a
    }
}

/// Median absolute deviation from the median.
fn mad(v: &[f64]) -> f64 {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let k = v.len() / 2;
        if v.len() % 2 == 1 {
            v[k]
        } else {
            0.5 * (v[k - 1] + v[k])
        }
    };
    let mut s = v.to_vec();
    let med = median(&mut s);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    median(&mut dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth complex object with structure in both directions.
    fn object(rows: usize, cols: usize) -> Vec<Complex32> {
        (0..rows * cols)
            .map(|i| {
                let (r, c) = ((i / cols) as f32, (i % cols) as f32);
                let a = 1.0 + 0.3 * (r * 0.31).sin() * (c * 0.17).cos();
                Complex32::from_polar(a, 0.8 * (r * 0.13 + c * 0.29).sin())
            })
            .collect()
    }

    #[test]
    fn the_shift_of_a_moved_patch_is_found() {
        // The data were taken 0.3 px down and 0.2 px left of where the
        // patch is cut: χ = P·(O(shifted) − O) to first order.
        let (n, big) = (32usize, 40usize);
        let o = object(big, big);
        let p: Vec<Complex32> = (0..n * n)
            .map(|i| {
                let (r, c) = ((i / n) as f32 - 15.5, (i % n) as f32 - 15.5);
                Complex32::new((-(r * r + c * c) / 60.0).exp(), 0.0)
            })
            .collect();
        let (c0, d) = (4usize, [0.3f32, -0.2f32]);
        let sample = |r: f32, c: f32| {
            // Bilinear interpolation of the object.
            let (r0, c0) = (r.floor(), c.floor());
            let (fr, fc) = (r - r0, c - c0);
            let g = |rr: f32, cc: f32| o[rr as usize * big + cc as usize];
            g(r0, c0) * (1.0 - fr) * (1.0 - fc)
                + g(r0 + 1.0, c0) * fr * (1.0 - fc)
                + g(r0, c0 + 1.0) * (1.0 - fr) * fc
                + g(r0 + 1.0, c0 + 1.0) * fr * fc
        };
        let mut oj = vec![Complex32::default(); n * n];
        let mut chi = vec![Complex32::default(); n * n];
        for r in 0..n {
            for c in 0..n {
                let (y, x) = ((c0 + r) as f32, (c0 + c) as f32);
                oj[r * n + c] = o[(c0 + r) * big + c0 + c];
                chi[r * n + c] = p[r * n + c] * (sample(y + d[0], x + d[1]) - oj[r * n + c]);
            }
        }
        let s = shift(&oj, &p, &chi, n);
        assert!(
            (s[0] - 0.3).abs() < 0.05 && (s[1] + 0.2).abs() < 0.05,
            "{s:?}"
        );
    }

    #[test]
    fn moves_are_clipped_centred_and_rounded() {
        let mut pos = Positions::new(&[(10, 10), (10, 30), (30, 10), (30, 30)]);
        let mut patches = vec![(10, 10), (10, 30), (30, 10), (30, 30)];
        let o = PositionOptions {
            start: 0,
            step: 1.0,
            limit: 0.1,
        };
        // One position wants to go far down; the others stay.
        pos.proposed = vec![[5.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]];
        let a = pos.apply(&o, 8, (48, 48), &mut patches);
        // MAD of [5, 0, 0, 0] is 0: nothing moves (one outlier is not trusted).
        assert_eq!(a.max, 0.0);
        pos.proposed = vec![[0.5, 0.05], [0.3, -0.05], [-0.2, 0.0], [0.1, 0.0]];
        let a = pos.apply(&o, 8, (48, 48), &mut patches);
        // Clipped at 0.1 px, then centred: −0.1 − 0.05 at most.
        assert!(a.max <= 0.15 + 1e-12, "{a:?}");
        let mean: f64 = pos.corners.iter().map(|c| c[0]).sum::<f64>() / 4.0;
        assert!(
            (mean - 20.0).abs() < 1e-12,
            "the mean position is kept: {mean}"
        );
        for _ in 0..6 {
            pos.proposed = vec![[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]];
            pos.apply(&o, 8, (48, 48), &mut patches);
        }
        // 0.1 px per epoch: position 0 is past 10.5 (10.65), 1 below 9.5.
        assert_eq!(patches[0], (11, 10), "{:?}", pos.corners);
        assert_eq!(patches[1], (9, 30));
    }
}
