//! LSQ-ML (Odstrčil, Menzel & Guizar-Sicairos 2018) with the Gaussian
//! noise model, in the PtychoShelves flavour pty-chi implements. Per
//! minibatch B of positions (object and probe fixed within it, so the
//! positions are processed in parallel):
//!
//! ```text
//! χ_j  = Π_F(ψ_j) − ψ_j                                  exit-wave correction
//! ΔP̂   = mean_j Σ χ_j conj(O_j)                          probe direction
//! ΔÔ   = Σ_j S_jᵀ(Σ_m χ_jm conj(P_m)) / sqrt(W² + (0.1 max W)²)
//!        with W = Σ_all j S_jᵀ Σ_m|P_m|²                  preconditioned object direction
//! per j: u = ΔÔ_j P, v = ΔP̂ O_j, a11 = Σ|u|² + λ, a22 = Σ|v|² + λ (each
//!        + 0.1·its batch mean), a12 = Σ u conj(v), b1 = Re Σ conj(u) χ,
//!        b2 = Re Σ conj(v) χ; solve for (α_O, α_P), clip at 0, × 0.9
//! O ← O + trimmed-mean_10%(α_O)·ΔÔ,   P ← P + mean(α_P)·ΔP̂
//! ```
//!
//! With a fixed probe α_O = b1/a11 per position.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use super::model::{illumination, Data, Field, Probe, Scratch};
use super::position;

/// pty-chi's `optimal_step_size_scaler`.
const STEP_SCALE: f32 = 0.9;
/// Relative floor of the illumination in the preconditioner.
const PRECOND_DAMPING: f32 = 0.1;

#[derive(Clone, Copy, Debug)]
pub struct LsqmlOptions {
    /// Positions per minibatch.
    pub batch: usize,
}

pub struct Lsqml {
    order: Vec<usize>,
    rng: rand::rngs::StdRng,
    scratch: Scratch,
    /// The illumination W, averaged over epochs.
    illum: Vec<f32>,
    /// Per-batch buffers, kept across batches.
    parts: Vec<Part>,
    d_obj: Vec<Complex32>,
    d_probe: Vec<Complex32>,
}

/// One position's share of a minibatch.
struct Part {
    j: usize,
    loss: f64,
    /// χ per mode.
    chi: Vec<Complex32>,
    /// The object patch it saw.
    oj: Vec<Complex32>,
    /// Its least-squares position shift, when asked for.
    shift: [f64; 2],
}

impl Lsqml {
    pub fn new(data: &Data, probe: &Probe, seed: u64) -> Lsqml {
        Lsqml {
            order: (0..data.positions()).collect(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            scratch: Scratch::new(data.n, probe.modes),
            illum: Vec::new(),
            parts: Vec::new(),
            d_obj: Vec::new(),
            d_probe: Vec::new(),
        }
    }

    /// One epoch of minibatches; returns the mean MSE-of-square-roots loss.
    /// With `shifts`, each position's least-squares position shift goes
    /// there.
    #[allow(clippy::too_many_arguments)]
    pub fn epoch(
        &mut self,
        data: &Data,
        obj: &mut Field,
        probe: &mut Probe,
        o: &LsqmlOptions,
        update_probe: bool,
        shuffle: bool,
        mut shifts: Option<&mut [[f64; 2]]>,
    ) -> f64 {
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let (rows, cols) = (obj.rows, obj.cols);
        let floor = update_illumination(&mut self.illum, data, probe, (rows, cols));
        if shuffle {
            self.order.shuffle(&mut self.rng);
        }
        let mut loss = 0.0;
        let order = self.order.clone();
        for batch in order.chunks(o.batch.max(1)) {
            let (obj_r, probe_r) = (&*obj, &*probe);
            // Exit-wave corrections, in parallel, into buffers kept from the
            // previous batch.
            while self.parts.len() < batch.len() {
                self.parts.push(Part {
                    j: 0,
                    loss: 0.0,
                    chi: vec![Complex32::default(); modes * nn],
                    oj: vec![Complex32::default(); nn],
                    shift: [0.0; 2],
                });
            }
            let parts = &mut self.parts[..batch.len()];
            let want_shifts = shifts.is_some();
            parts.par_iter_mut().zip(batch.par_iter()).for_each_init(
                || self.scratch.clone(),
                |s, (part, &j)| {
                    obj_r.extract(data.corners[j], n, &mut s.oj);
                    s.exit_waves(probe_r);
                    part.j = j;
                    part.loss = s.project(modes, data.amp(j), 0.0);
                    part.oj.copy_from_slice(&s.oj);
                    part.chi.copy_from_slice(&s.waves);
                    for m in 0..modes {
                        for ((c, p), oj) in part.chi[m * nn..(m + 1) * nn]
                            .iter_mut()
                            .zip(probe_r.mode(m))
                            .zip(&s.oj)
                        {
                            *c -= p * oj;
                        }
                    }
                    if want_shifts {
                        part.shift = position::shift(&part.oj, probe_r.mode(0), &part.chi[..nn], n);
                    }
                },
            );
            let parts = &self.parts[..batch.len()];
            if let Some(sh) = shifts.as_deref_mut() {
                for p in parts {
                    sh[p.j] = p.shift;
                }
            }
            loss += parts.iter().map(|p| p.loss).sum::<f64>();
            // Object direction: scatter-add, then precondition.
            let d_obj = &mut self.d_obj;
            d_obj.clear();
            d_obj.resize(rows * cols, Complex32::default());
            for p in parts {
                let c = data.corners[p.j];
                for r in 0..n {
                    let row = &mut d_obj[(c.0 + r) * cols + c.1..][..n];
                    for m in 0..modes {
                        let pm = &probe.mode(m)[r * n..(r + 1) * n];
                        let ch = &p.chi[m * nn + r * n..m * nn + (r + 1) * n];
                        for ((d, pv), cv) in row.iter_mut().zip(pm).zip(ch) {
                            *d += cv * pv.conj();
                        }
                    }
                }
            }
            for (d, w) in d_obj.iter_mut().zip(&self.illum) {
                *d /= (w * w + floor).sqrt().max(f32::MIN_POSITIVE);
            }
            // Probe direction: the batch mean.
            let d_probe = &mut self.d_probe;
            d_probe.clear();
            d_probe.resize(modes * nn, Complex32::default());
            if update_probe {
                for p in parts {
                    for m in 0..modes {
                        for ((d, c), oj) in d_probe[m * nn..(m + 1) * nn]
                            .iter_mut()
                            .zip(&p.chi[m * nn..(m + 1) * nn])
                            .zip(&p.oj)
                        {
                            *d += c * oj.conj();
                        }
                    }
                }
                let k = 1.0 / parts.len() as f32;
                d_probe.iter_mut().for_each(|d| *d *= k);
            }
            // Step sizes per position, in parallel.
            let (d_obj_r, d_probe_r, probe_r) = (&*d_obj, &*d_probe, &*probe);
            let sums: Vec<[f64; 6]> = parts
                .par_iter()
                .map(|p| {
                    let c = data.corners[p.j];
                    // a11, a22, Re a12, Im a12, b1, b2
                    let mut s = [0f64; 6];
                    for r in 0..n {
                        let drow = &d_obj_r[(c.0 + r) * cols + c.1..][..n];
                        for m in 0..modes {
                            for (k, dv) in drow.iter().enumerate() {
                                let i = r * n + k;
                                let u = dv * probe_r.data[m * nn + i];
                                let chi = p.chi[m * nn + i];
                                s[0] += f64::from(u.norm_sqr());
                                s[4] += f64::from((u.conj() * chi).re);
                                if update_probe {
                                    let v = d_probe_r[m * nn + i] * p.oj[i];
                                    s[1] += f64::from(v.norm_sqr());
                                    let x = u * v.conj();
                                    s[2] += f64::from(x.re);
                                    s[3] += f64::from(x.im);
                                    s[5] += f64::from((v.conj() * chi).re);
                                }
                            }
                        }
                    }
                    s
                })
                .collect();
            let (ao, ap) = step_sizes(&sums, nn, modes, update_probe);
            for (o, d) in obj.data.iter_mut().zip(d_obj.iter()) {
                *o += ao * d;
            }
            if update_probe {
                for (p, d) in probe.data.iter_mut().zip(d_probe.iter()) {
                    *p += ap * d;
                }
            }
        }
        loss / (data.positions() * nn) as f64
    }
}

/// Folds this epoch's illumination into `illum` (the average with the
/// previous epoch's, as PtychoShelves does; the first epoch's as it is) and
/// returns the preconditioner's floor `(0.1·max W)²`.
pub(crate) fn update_illumination(
    illum: &mut Vec<f32>,
    data: &Data,
    probe: &Probe,
    shape: (usize, usize),
) -> f32 {
    let w_new = illumination(probe, &data.corners, shape);
    if illum.len() == w_new.len() {
        for (a, b) in illum.iter_mut().zip(&w_new) {
            *a = 0.5 * (*a + b);
        }
    } else {
        *illum = w_new;
    }
    let wmax = illum.iter().copied().fold(0.0, f32::max);
    (PRECOND_DAMPING * wmax).powi(2)
}

/// The object and probe step sizes of a minibatch from each position's
/// sums `[Σ|u|², Σ|v|², Re Σ u·conj(v), Im Σ u·conj(v), Re Σ conj(u)χ,
/// Re Σ conj(v)χ]`: per position the 2×2 system (each diagonal damped by
/// λ and 0.1 of its batch mean; the real part of the solution, clipped at
/// 0), then the 10 % trimmed mean of α_O and the mean of α_P, × 0.9 (α_O
/// also divided among the probe modes).
pub(crate) fn step_sizes(
    sums: &[[f64; 6]],
    nn: usize,
    modes: usize,
    update_probe: bool,
) -> (f32, f32) {
    let lam = 1.2e-7 / nn as f64;
    let nb = sums.len().max(1) as f64;
    let mean = |k: usize| sums.iter().map(|s| s[k]).sum::<f64>() / nb;
    let (m11, m22) = (mean(0), mean(1));
    let mut alpha_o = Vec::with_capacity(sums.len());
    let mut alpha_p = Vec::with_capacity(sums.len());
    for s in sums {
        let a11 = s[0] + lam + 0.1 * m11;
        if update_probe {
            let a22 = s[1] + lam + 0.1 * m22;
            // [[a11, a12], [conj a12, a22]] x = b with b real: the
            // determinant is real, keep the real part of x.
            let (re12, im12) = (s[2], s[3]);
            let det = a11 * a22 - (re12 * re12 + im12 * im12);
            if det.abs() > 0.0 {
                alpha_o.push(((a22 * s[4] - re12 * s[5]) / det).max(0.0));
                alpha_p.push(((a11 * s[5] - re12 * s[4]) / det).max(0.0));
            } else {
                alpha_o.push(0.0);
                alpha_p.push(0.0);
            }
        } else {
            alpha_o.push((s[4] / a11).max(0.0));
        }
    }
    let ao = trimmed_mean(&mut alpha_o, 0.1) as f32 * STEP_SCALE / modes as f32;
    let ap = alpha_p.iter().sum::<f64>() as f32 / alpha_p.len().max(1) as f32 * STEP_SCALE;
    (ao, ap)
}

/// Mean after dropping `frac` of the values at each end.
fn trimmed_mean(v: &mut [f64], frac: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let k = (v.len() as f64 * frac).floor() as usize;
    let kept = &v[k..v.len() - k];
    kept.iter().sum::<f64>() / kept.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_mean_drops_the_tails() {
        let mut v: Vec<f64> = (0..10).map(f64::from).collect();
        v[9] = 1000.0;
        // 10 % of 10 values: one dropped at each end → mean of 1..=8.
        assert!((trimmed_mean(&mut v, 0.1) - 4.5).abs() < 1e-12);
    }
}
