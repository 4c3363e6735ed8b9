//! The difference map (Thibault et al. 2008, 2009 Eq. 9): all exit waves
//! are kept, and one iteration is
//!
//! ```text
//! φ_j = P ⊙ O_j                          (the overlap projection of ψ)
//! ψ_j ← ψ_j + β [Π_F(2φ_j − ψ_j) − φ_j]
//! P   ← Σ_j conj(O_j) ψ_j / sqrt((Σ_j |O_j|²)² + (0.05·max)²)
//! O   ← Σ_j S_jᵀ(Σ_m conj(P_m) ψ_jm) / sqrt((Σ_j S_jᵀ Σ_m|P_m|²)² + (0.05·max)²)
//! ```
//!
//! The exit-wave step is independent per position (parallel over
//! positions); the overlap step sums over them (per-thread accumulators).
//! The probe is solved with the old object, then the object with the new
//! probe, `inner` times per iteration: Thibault 2009 alternates these
//! several times, since one pass solves the joint overlap constraint only
//! approximately.
//!
//! On noisy data the exact modulus projection makes DM diverge: it has no
//! fixed point when the patterns are inconsistent, and with Poisson counts
//! the exit waves keep chasing the noise (on the `medium` set the object
//! error falls to 0.10 by iteration 30, then climbs past 0.35 by 100 — the
//! behaviour the reference saw from pty-chi's DM, which has no remedy for
//! it). PtyPy's answer, used here by default, relaxes the Fourier
//! constraint: a pattern already within `0.25·relax²·ΣI` of its data is not
//! touched, and a farther one is moved only to that distance (relax 0.05,
//! PtyPy's default): the same data then converge to 0.059 in 100 iterations.

use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use super::model::{illumination, Data, Field, Probe, Scratch};

/// Relative floor of the overlap step's denominators, as pty-chi.
const REG: f32 = 0.05;

#[derive(Clone, Copy, Debug)]
pub struct DmOptions {
    /// β: the exit-wave relaxation (1 in Thibault 2009).
    pub beta: f32,
    /// Probe/object alternations of the overlap step per iteration.
    pub inner: usize,
    /// PtyPy's `fourier_relax_factor`: the Fourier constraint tolerates a
    /// deviation of `0.25·relax²·ΣI` per pattern (0 = exact projection).
    pub relax: f32,
}

/// The exit waves: position-major, then mode, n×n each.
pub struct Dm {
    psi: Vec<Complex32>,
    scratch: Scratch,
    /// Σ I per pattern, for the Fourier relaxation's bound.
    power: Vec<f32>,
}

impl Dm {
    pub fn new(data: &Data, obj: &Field, probe: &Probe) -> Dm {
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let mut scratch = Scratch::new(n, modes);
        let mut psi = vec![Complex32::default(); data.positions() * modes * nn];
        for (j, w) in psi.chunks_mut(modes * nn).enumerate() {
            obj.extract(data.corners[j], n, &mut scratch.oj);
            scratch.exit_waves(probe);
            w.copy_from_slice(&scratch.waves);
        }
        let power = (0..data.positions())
            .map(|j| data.amp(j).iter().map(|a| a * a).sum())
            .collect();
        Dm {
            psi,
            scratch,
            power,
        }
    }

    /// One iteration; returns pty-chi's DM error, the norm of the exit-wave
    /// change `sqrt(Σ_j ‖Δψ_j‖²)`.
    pub fn iterate(
        &mut self,
        data: &Data,
        obj: &mut Field,
        probe: &mut Probe,
        o: &DmOptions,
        update_probe: bool,
    ) -> f64 {
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let chunk = modes * nn;
        let (obj_r, probe_r) = (&*obj, &*probe);
        let power = &self.power;
        let change: f64 = self
            .psi
            .par_chunks_mut(chunk)
            .enumerate()
            .map_init(
                || self.scratch.clone(),
                |s, (j, psi)| {
                    obj_r.extract(data.corners[j], n, &mut s.oj);
                    s.exit_waves(probe_r);
                    for (w, p) in s.waves.iter_mut().zip(psi.iter()) {
                        *w = 2.0 * *w - p;
                    }
                    let pbound = o.relax * o.relax * 0.25 * power[j];
                    s.project(modes, data.amp(j), pbound);
                    // φ = P·O_j again, rather than a copy kept per position.
                    let mut change = 0.0f64;
                    for m in 0..modes {
                        let pm = probe_r.mode(m);
                        for (((p, w), pv), ov) in psi[m * nn..(m + 1) * nn]
                            .iter_mut()
                            .zip(&s.waves[m * nn..(m + 1) * nn])
                            .zip(pm)
                            .zip(&s.oj)
                        {
                            let d = o.beta * (w - pv * ov);
                            change += f64::from(d.norm_sqr());
                            *p += d;
                        }
                    }
                    change
                },
            )
            .sum();
        for _ in 0..o.inner.max(1) {
            if update_probe {
                self.solve_probe(data, obj, probe);
            }
            self.solve_object(data, obj, probe);
        }
        change.sqrt()
    }

    fn solve_probe(&self, data: &Data, obj: &Field, probe: &mut Probe) {
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let chunk = modes * nn;
        let zero = || {
            (
                vec![Complex32::default(); chunk],
                vec![0f32; nn],
                vec![Complex32::default(); nn],
            )
        };
        let (num, den, _) = self
            .psi
            .par_chunks(chunk)
            .enumerate()
            .fold(zero, |(mut num, mut den, mut oj), (j, psi)| {
                obj.extract(data.corners[j], n, &mut oj);
                for m in 0..modes {
                    for i in 0..nn {
                        num[m * nn + i] += oj[i].conj() * psi[m * nn + i];
                    }
                }
                for (d, v) in den.iter_mut().zip(&oj) {
                    *d += v.norm_sqr();
                }
                (num, den, oj)
            })
            .reduce(zero, |mut a, b| {
                a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
                a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
                a
            });
        let floor = (REG * den.iter().copied().fold(0.0, f32::max)).powi(2);
        for m in 0..modes {
            for i in 0..nn {
                probe.data[m * nn + i] = num[m * nn + i] / (den[i] * den[i] + floor).sqrt();
            }
        }
    }

    fn solve_object(&self, data: &Data, obj: &mut Field, probe: &Probe) {
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let (rows, cols) = (obj.rows, obj.cols);
        let illum = illumination(probe, &data.corners, (rows, cols));
        let chunk = modes * nn;
        let zero = || vec![Complex32::default(); rows * cols];
        let num = self
            .psi
            .par_chunks(chunk)
            .enumerate()
            .fold(zero, |mut acc, (j, psi)| {
                let c = data.corners[j];
                for r in 0..n {
                    let row = &mut acc[(c.0 + r) * cols + c.1..][..n];
                    for (k, a) in row.iter_mut().enumerate() {
                        let i = r * n + k;
                        for m in 0..modes {
                            *a += probe.data[m * nn + i].conj() * psi[m * nn + i];
                        }
                    }
                }
                acc
            })
            .reduce(zero, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            });
        let floor = (REG * illum.iter().copied().fold(0.0, f32::max)).powi(2);
        for ((o, v), w) in obj.data.iter_mut().zip(&num).zip(&illum) {
            // Positions that never see the probe keep their value.
            if *w > 0.0 {
                *o = v / (w * w + floor).sqrt();
            }
        }
    }
}
