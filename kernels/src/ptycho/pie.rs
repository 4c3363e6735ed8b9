//! ePIE and rPIE: one position at a time, object and probe updated from the
//! same exit-wave correction (Maiden & Rodenburg 2009; Maiden, Johnson & Li
//! 2017, Table 1):
//!
//! ```text
//! O_j ← O_j + γ_O · Σ_m conj(P_m) Δψ_m / ((1−α) Σ_m|P_m|² + α max Σ_m|P_m|²)
//! P_m ← P_m + γ_P · conj(O_j) Δψ_m   / ((1−β) |O_j|²     + β max |O_j|²)
//! ```
//!
//! with `Δψ = Π_F(ψ) − ψ` and both updates from the pre-update `O_j`, `P`.
//! α = β = 1 is ePIE. Sequential by nature (each position sees the previous
//! one's update); the parallelism is inside the FFTs' row batches.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rustfft::num_complex::Complex32;

use super::model::{Data, Field, Probe, Scratch};
use super::position;

/// rPIE's weights and step sizes.
#[derive(Clone, Copy, Debug)]
pub struct PieOptions {
    /// α of the object update (1 = ePIE).
    pub alpha: f32,
    /// β of the probe update (1 = ePIE).
    pub beta: f32,
    /// γ_O.
    pub object_step: f32,
    /// γ_P.
    pub probe_step: f32,
}

/// Buffers reused across epochs.
pub struct Pie {
    scratch: Scratch,
    pint: Vec<f32>,
    weight: Vec<Complex32>,
    order: Vec<usize>,
    rng: rand::rngs::StdRng,
}

impl Pie {
    pub fn new(data: &Data, probe: &Probe, seed: u64) -> Pie {
        Pie {
            scratch: Scratch::new(data.n, probe.modes),
            pint: vec![0.0; data.n * data.n],
            weight: Vec::new(),
            order: (0..data.positions()).collect(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// The object update's weights `γ_O·conj(P_m) / ((1−α)Σ|P|² + α max)`,
    /// for the current probe.
    fn refresh(&mut self, probe: &Probe, o: &PieOptions) {
        let nn = probe.n * probe.n;
        let pmax = probe.intensity(&mut self.pint);
        let ao = o.alpha * pmax;
        self.weight.resize(probe.modes * nn, Complex32::default());
        for m in 0..probe.modes {
            for ((w, p), &pi) in self.weight[m * nn..(m + 1) * nn]
                .iter_mut()
                .zip(probe.mode(m))
                .zip(&self.pint)
            {
                let den = ((1.0 - o.alpha) * pi + ao).max(f32::MIN_POSITIVE);
                *w = p.conj() * (o.object_step / den);
            }
        }
    }

    /// One pass over every position, in random order when `shuffle`.
    /// Returns the mean MSE-of-square-roots loss. With `shifts`, each
    /// position's least-squares position shift goes there.
    #[allow(clippy::too_many_arguments)]
    pub fn epoch(
        &mut self,
        data: &Data,
        obj: &mut Field,
        probe: &mut Probe,
        o: &PieOptions,
        update_probe: bool,
        shuffle: bool,
        mut shifts: Option<&mut [[f64; 2]]>,
    ) -> f64 {
        if shuffle {
            self.order.shuffle(&mut self.rng);
        }
        let (n, nn, modes) = (data.n, data.n * data.n, probe.modes);
        let mut loss = 0.0;
        self.refresh(probe, o);
        for k in 0..self.order.len() {
            let j = self.order[k];
            let c = data.corners[j];
            let s = &mut self.scratch;
            obj.extract(c, n, &mut s.oj);
            s.exit_waves(probe);
            loss += s.project(modes, data.amp(j), 0.0);
            // The projected waves are in `s.waves`; ψ = P·O_j is recomputed
            // in the update loop rather than kept.
            if update_probe {
                let omax = s.oj.iter().map(|v| v.norm_sqr()).fold(0.0, f32::max);
                let bo = o.beta * omax;
                for m in 0..modes {
                    let pm = &mut probe.data[m * nn..(m + 1) * nn];
                    for (i, p) in pm.iter_mut().enumerate() {
                        let oj = s.oj[i];
                        let d = s.waves[m * nn + i] - *p * oj;
                        let w = o.probe_step
                            / ((1.0 - o.beta) * oj.norm_sqr() + bo).max(f32::MIN_POSITIVE);
                        // The object update below needs the old probe's
                        // Δψ: keep it in place of the projected wave.
                        s.waves[m * nn + i] = d;
                        *p += oj.conj() * d * w;
                    }
                }
            } else {
                for m in 0..modes {
                    let pm = probe.mode(m);
                    for ((w, p), oj) in s.waves[m * nn..(m + 1) * nn].iter_mut().zip(pm).zip(&s.oj)
                    {
                        *w -= p * oj;
                    }
                }
            }
            if let Some(sh) = shifts.as_deref_mut() {
                sh[j] = position::shift(&s.oj, probe.mode(0), &s.waves[..nn], n);
            }
            // O_j += Σ_m weight_m ⊙ Δψ_m, straight into the object.
            for r in 0..n {
                let row = &mut obj.data[(c.0 + r) * obj.cols + c.1..][..n];
                for m in 0..modes {
                    let w = &self.weight[m * nn + r * n..m * nn + (r + 1) * n];
                    let d = &s.waves[m * nn + r * n..m * nn + (r + 1) * n];
                    for ((ov, w), d) in row.iter_mut().zip(w).zip(d) {
                        *ov += w * d;
                    }
                }
            }
            if update_probe {
                // Weights from the probe before this update were used above.
                self.refresh(probe, o);
            }
        }
        loss / (self.order.len() * nn) as f64
    }
}
