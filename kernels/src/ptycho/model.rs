//! The far-field forward model and the arrays it works on: object, probe
//! modes, measured amplitudes, scan positions.
//!
//! Conventions are pty-chi's: exit waves `ψ_m = P_m ⊙ O_j` with `O_j` the
//! n×n patch of the object at position j's top-left corner, far field
//! `Ψ_m = F ψ_m` (unnormalised FFT), incoherent modes adding in intensity:
//! `I_j = Σ_m |Ψ_m|²`. Positions are given as probe-centre offsets from the
//! object centre (pty-chi, Ptychodus) or as top-left corners (tike, PtyLab);
//! both become integer corners here.

use rustfft::num_complex::Complex32;

use super::fft::Fft2;

/// Added under square roots, as pty-chi does (`sqrt(I + 1e-7)`).
pub const EPS: f32 = 1e-7;

/// A complex 2D array, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<Complex32>,
}

impl Field {
    pub fn filled(rows: usize, cols: usize, v: Complex32) -> Field {
        Field {
            rows,
            cols,
            data: vec![v; rows * cols],
        }
    }

    /// Copies the n×n patch with top-left corner `c` into `out`.
    pub fn extract(&self, c: (usize, usize), n: usize, out: &mut [Complex32]) {
        for r in 0..n {
            let at = (c.0 + r) * self.cols + c.1;
            out[r * n..(r + 1) * n].copy_from_slice(&self.data[at..at + n]);
        }
    }
}

/// Incoherent probe modes, each n×n, mode-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub n: usize,
    pub modes: usize,
    pub data: Vec<Complex32>,
}

impl Probe {
    pub fn mode(&self, m: usize) -> &[Complex32] {
        let nn = self.n * self.n;
        &self.data[m * nn..(m + 1) * nn]
    }

    /// `Σ_m |P_m|²` per pixel, and its maximum.
    pub fn intensity(&self, out: &mut [f32]) -> f32 {
        let nn = self.n * self.n;
        out[..nn].fill(0.0);
        for m in 0..self.modes {
            for (o, p) in out.iter_mut().zip(self.mode(m)) {
                *o += p.norm_sqr();
            }
        }
        out[..nn].iter().copied().fold(0.0, f32::max)
    }

    /// Adds `extra` further modes, each a copy of the first scaled by
    /// `scale` with a different phase tilt, then orthogonalises: the usual
    /// start for mixed-state retrieval.
    pub fn with_modes(mut self, extra: usize, scale: f32) -> Probe {
        let (n, nn) = (self.n, self.n * self.n);
        let first = self.mode(0).to_vec();
        for k in 1..=extra {
            let t = k as f32 * std::f32::consts::PI / n as f32;
            self.data.extend(first.iter().enumerate().map(|(i, p)| {
                let (r, c) = ((i / n) as f32, (i % n) as f32);
                p * scale * Complex32::from_polar(1.0, t * (r + c))
            }));
        }
        self.modes += extra;
        debug_assert_eq!(self.data.len(), self.modes * nn);
        self.orthogonalise();
        self
    }

    /// Gram–Schmidt on the modes after sorting them by power (strongest
    /// first), so that mode 0 stays the dominant one; the total power is
    /// kept.
    pub fn orthogonalise(&mut self) {
        if self.modes < 2 {
            return;
        }
        let nn = self.n * self.n;
        let total: f32 = self.data.iter().map(|v| v.norm_sqr()).sum();
        let mut modes: Vec<Vec<Complex32>> = self.data.chunks(nn).map(|c| c.to_vec()).collect();
        let power = |m: &Vec<Complex32>| m.iter().map(|v| v.norm_sqr()).sum::<f32>();
        modes.sort_by(|a, b| power(b).total_cmp(&power(a)));
        for i in 0..modes.len() {
            let (done, rest) = modes.split_at_mut(i);
            let mi = &mut rest[0];
            for mj in done.iter() {
                let pj = power(mj);
                if pj == 0.0 {
                    continue;
                }
                let proj: Complex32 = mj
                    .iter()
                    .zip(mi.iter())
                    .map(|(a, b)| a.conj() * b)
                    .sum::<Complex32>()
                    / pj;
                for (b, a) in mi.iter_mut().zip(mj) {
                    *b -= proj * a;
                }
            }
        }
        let after: f32 = modes.iter().map(power).sum();
        let s = if after > 0.0 {
            (total / after).sqrt()
        } else {
            1.0
        };
        self.data = modes.into_iter().flatten().map(|v| v * s).collect();
    }
}

/// `W = Σ_j S_jᵀ Σ_m|P_m|²` over the patches at `corners`: how much probe
/// intensity each pixel of a `shape` object receives over the scan.
pub fn illumination(probe: &Probe, corners: &[(usize, usize)], shape: (usize, usize)) -> Vec<f32> {
    let n = probe.n;
    let mut pint = vec![0f32; n * n];
    probe.intensity(&mut pint);
    let mut w = vec![0f32; shape.0 * shape.1];
    for &c in corners {
        for r in 0..n {
            let row = &mut w[(c.0 + r) * shape.1 + c.1..][..n];
            for (a, p) in row.iter_mut().zip(&pint[r * n..(r + 1) * n]) {
                *a += p;
            }
        }
    }
    w
}

/// Measured data in the engines' layout.
#[derive(Clone, Debug)]
pub struct Data {
    pub n: usize,
    /// `sqrt(I + EPS)` per position, zero frequency at [0, 0], transposed
    /// (the layout of [`Fft2::forward`]'s output). Position-major.
    pub amp: Vec<f32>,
    /// Top-left corner (row, col) of each position's patch in the object.
    pub corners: Vec<(usize, usize)>,
    /// Object (rows, cols).
    pub shape: (usize, usize),
    /// Largest distance a position was moved to reach an integer corner, px.
    pub rounding: f64,
}

impl Data {
    pub fn positions(&self) -> usize {
        self.corners.len()
    }

    pub fn amp(&self, j: usize) -> &[f32] {
        let nn = self.n * self.n;
        &self.amp[j * nn..(j + 1) * nn]
    }

    /// From DC-centred intensities `(N, n, n)` and probe-centre offsets
    /// `(y, x)` from the object centre (pty-chi's convention: an integer
    /// offset p puts the patch corner at `p + round(H/2) − 0.5 − (n−1)/2`).
    pub fn from_centres(
        intensities: &[f32],
        n: usize,
        centres_yx: &[[f64; 2]],
        shape: (usize, usize),
    ) -> Result<Data, String> {
        let origin = |len: usize| (len as f64 / 2.0).round() - 0.5 - (n as f64 - 1.0) / 2.0;
        let corners: Vec<[f64; 2]> = centres_yx
            .iter()
            .map(|p| [p[0] + origin(shape.0), p[1] + origin(shape.1)])
            .collect();
        Data::from_corners(intensities, n, &corners, shape)
    }

    /// From DC-centred intensities `(N, n, n)` and top-left corners `(row,
    /// col)` in the object (tike's and PtyLab's convention).
    pub fn from_corners(
        intensities: &[f32],
        n: usize,
        corners_yx: &[[f64; 2]],
        shape: (usize, usize),
    ) -> Result<Data, String> {
        let nn = n.saturating_mul(n);
        if n < 2 || !n.is_multiple_of(2) {
            return Err(format!("patterns are {n}×{n}: the size must be even"));
        }
        if corners_yx.len().checked_mul(nn) != Some(intensities.len()) {
            return Err(format!(
                "{} patterns of {n}×{n} but {} positions",
                intensities.len() / nn.max(1),
                corners_yx.len()
            ));
        }
        if let Some(i) = intensities.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "pattern {} pixel ({}, {}) is not finite ({})",
                i / nn,
                i % nn / n,
                i % n,
                intensities[i]
            ));
        }
        let mut rounding = 0.0f64;
        let mut corners = Vec::with_capacity(corners_yx.len());
        for (j, c) in corners_yx.iter().enumerate() {
            if !(c[0].is_finite() && c[1].is_finite()) {
                return Err(format!("position {j} is not finite: {c:?}"));
            }
            let (r, k) = (c[0].round(), c[1].round());
            rounding = rounding.max((r - c[0]).hypot(k - c[1]));
            if r < 0.0
                || k < 0.0
                || (r as usize).saturating_add(n) > shape.0
                || (k as usize).saturating_add(n) > shape.1
            {
                return Err(format!(
                    "position {j}: the {n}×{n} patch at corner ({r}, {k}) leaves the {}×{} object",
                    shape.0, shape.1
                ));
            }
            corners.push((r as usize, k as usize));
        }
        let mut amp = Vec::with_capacity(intensities.len());
        let mut pattern = vec![0f32; nn];
        let mut t = vec![0f32; nn];
        for j in 0..corners.len() {
            // Negative counts (dark subtraction) carry no amplitude.
            for (a, &i) in pattern.iter_mut().zip(&intensities[j * nn..(j + 1) * nn]) {
                *a = (i.max(0.0) + EPS).sqrt();
            }
            super::fft::fftshift(&mut pattern, n);
            super::fft::transpose(&pattern, &mut t, n);
            amp.extend_from_slice(&t);
        }
        Ok(Data {
            n,
            amp,
            corners,
            shape,
            rounding,
        })
    }

    /// The object size that holds every patch with a margin: scan extent +
    /// probe + 2·margin, rounded up to even.
    pub fn shape_for(centres_yx: &[[f64; 2]], n: usize, margin: usize) -> (usize, usize) {
        let span = |k: usize| {
            let (lo, hi) = centres_yx
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p[k]), b.max(p[k]))
                });
            // Symmetric about the centre, since offsets are from it.
            // Saturating: a far-off (or infinite) position asks for an
            // object that the caller refuses by its size.
            let half = lo.abs().max(hi.abs()).ceil() as usize;
            let len = half
                .saturating_mul(2)
                .saturating_add(n)
                .saturating_add(margin.saturating_mul(2));
            len.saturating_add(len % 2)
        };
        (span(0), span(1))
    }
}

/// Per-thread buffers for one position's forward model and projection.
#[derive(Clone)]
pub struct Scratch {
    pub fft: Fft2,
    /// The object patch.
    pub oj: Vec<Complex32>,
    /// Exit waves, one n×n block per mode.
    pub waves: Vec<Complex32>,
    spec: Vec<Complex32>,
    modulus: Vec<f32>,
}

impl Scratch {
    pub fn new(n: usize, modes: usize) -> Scratch {
        Scratch {
            fft: Fft2::new(n),
            oj: vec![Complex32::default(); n * n],
            waves: vec![Complex32::default(); modes * n * n],
            spec: vec![Complex32::default(); modes * n * n],
            modulus: vec![0.0; n * n],
        }
    }

    /// `waves_m = P_m ⊙ oj`.
    pub fn exit_waves(&mut self, probe: &Probe) {
        let nn = probe.n * probe.n;
        for m in 0..probe.modes {
            for ((w, p), o) in self.waves[m * nn..(m + 1) * nn]
                .iter_mut()
                .zip(probe.mode(m))
                .zip(&self.oj)
            {
                *w = p * o;
            }
        }
    }

    /// Replaces `waves` by their modulus projection `Π_F`: each mode's far
    /// field rescaled to the measured amplitude `A / (sqrt(Σ_m|Ψ_m|²) + EPS)`.
    /// Returns `Σ (sqrt(I_pred + EPS) − A)²` over the pattern, pty-chi's
    /// MSE-of-square-roots loss before averaging.
    ///
    /// With `pbound > 0` the projection is relaxed as PtyPy's DM does for
    /// noisy data: a pattern whose deviation `Σ(|Ψ| − A)²` is within
    /// `pbound` is left alone, and a larger one is moved only to the
    /// boundary of that ball (`|Ψ| → A + (|Ψ| − A)·sqrt(pbound/err)`), so
    /// the iterate is not forced to fit the Poisson noise exactly.
    pub fn project(&mut self, modes: usize, amp: &[f32], pbound: f32) -> f64 {
        let n = self.fft.n();
        let nn = n * n;
        for m in 0..modes {
            self.fft.forward(
                &mut self.waves[m * nn..(m + 1) * nn],
                &mut self.spec[m * nn..(m + 1) * nn],
            );
        }
        let inv_nn = 1.0 / nn as f32;
        let power = |spec: &[Complex32], k: usize| -> f32 {
            (0..modes).map(|m| spec[m * nn + k].norm_sqr()).sum()
        };
        // The predicted modulus |Ψ| per pixel is kept in `modulus` between
        // the two passes. (The loss uses sqrt(I) for sqrt(I + EPS): the two
        // differ by under 3e-4 only where I ≈ 0, a change of 1e-7 per pixel.)
        let mut loss = 0.0f64;
        for (k, (&a, r)) in amp.iter().zip(self.modulus.iter_mut()).enumerate() {
            let i = if modes == 1 {
                self.spec[k].norm_sqr()
            } else {
                power(&self.spec, k)
            };
            *r = i.sqrt();
            let d = *r - a;
            loss += f64::from(d * d);
        }
        // The fraction of the way to the measured modulus.
        let pull = if pbound > 0.0 {
            if loss <= f64::from(pbound) {
                0.0
            } else {
                1.0 - (f64::from(pbound) / loss).sqrt() as f32
            }
        } else {
            1.0
        };
        for m in 0..modes {
            for ((s, &a), &r) in self.spec[m * nn..(m + 1) * nn]
                .iter_mut()
                .zip(amp)
                .zip(&self.modulus)
            {
                let target = r + pull * (a - r);
                *s *= target / (r + EPS) * inv_nn;
            }
        }
        for m in 0..modes {
            self.fft.inverse(
                &mut self.spec[m * nn..(m + 1) * nn],
                &mut self.waves[m * nn..(m + 1) * nn],
            );
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projecting_a_consistent_wave_leaves_it_unchanged() {
        let n = 16;
        let probe = Probe {
            n,
            modes: 1,
            data: (0..n * n)
                .map(|i| Complex32::from_polar(1.0 + (i % 7) as f32, i as f32 * 0.3))
                .collect(),
        };
        let obj = Field {
            rows: 20,
            cols: 20,
            data: (0..400)
                .map(|i| Complex32::from_polar(0.8, (i as f32 * 0.05).sin()))
                .collect(),
        };
        let mut s = Scratch::new(n, 1);
        obj.extract((2, 3), n, &mut s.oj);
        s.exit_waves(&probe);
        let psi = s.waves.clone();
        // Its own intensities, DC-centred as a detector records them.
        let mut spec = vec![Complex32::default(); n * n];
        let mut tmp = psi.clone();
        Fft2::new(n).forward(&mut tmp, &mut spec);
        let mut t = vec![0f32; n * n];
        super::super::fft::transpose(
            &spec.iter().map(|v| v.norm_sqr()).collect::<Vec<_>>(),
            &mut t,
            n,
        );
        super::super::fft::fftshift(&mut t, n);
        let d = Data::from_corners(&t, n, &[[2.0, 3.0]], (20, 20)).unwrap();
        let loss = s.project(1, d.amp(0), 0.0);
        assert!(loss < 1e-6 * (n * n) as f64, "{loss}");
        for (a, b) in s.waves.iter().zip(&psi) {
            assert!((a - b).norm() <= 1e-4 * b.norm().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = Data::from_corners(&[0.0; 8], 2, &[[0.0, 0.0]], (4, 4)).unwrap_err();
        assert!(e.contains("2 patterns") && e.contains("1 positions"), "{e}");
        let mut i = vec![1.0; 8];
        i[5] = f32::NAN;
        let e = Data::from_corners(&i, 2, &[[0.0, 0.0], [1.0, 1.0]], (4, 4)).unwrap_err();
        assert!(e.contains("pattern 1 pixel (0, 1)"), "{e}");
        let e = Data::from_corners(&[1.0; 4], 2, &[[3.0, 0.0]], (4, 4)).unwrap_err();
        assert!(e.contains("position 0") && e.contains("leaves"), "{e}");
    }

    #[test]
    fn orthogonalised_modes_are_orthogonal_and_keep_their_power() {
        let n = 8;
        let p = Probe {
            n,
            modes: 1,
            data: (0..n * n)
                .map(|i| Complex32::new(1.0 + (i % 5) as f32, (i % 3) as f32))
                .collect(),
        };
        let before: f32 = p.data.iter().map(|v| v.norm_sqr()).sum();
        let q = p.with_modes(2, 0.3);
        let after: f32 = q.data.iter().map(|v| v.norm_sqr()).sum();
        assert!(
            (after / before - 1.0 - 2.0 * 0.09).abs() < 1e-3,
            "{after} {before}"
        );
        for i in 0..3 {
            for j in 0..i {
                let d: Complex32 = q
                    .mode(i)
                    .iter()
                    .zip(q.mode(j))
                    .map(|(a, b)| a * b.conj())
                    .sum();
                assert!(d.norm() < 1e-3 * after, "modes {i},{j}: {d}");
            }
        }
    }
}
