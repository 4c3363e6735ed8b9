//! XPCS speckle from Brownian dynamics with a known g2.
//!
//! Each pixel holds M independent complex-Gaussian modes evolved as an exact
//! AR(1) (Ornstein–Uhlenbeck) process with g1(τ) = exp(−Γτ), Γ = D·q². The
//! speckle intensity is the mean of the modes' |E|², so the contrast is
//! β = 1/M; counts are Poisson with mean I0(q)·S. Hence
//! g2(τ) = 1 + β·exp(−2Γτ). Geometry follows the reference's generator
//! (reference/xpcs.md §8): 75 µm pixels, 10 keV, detector distance
//! 5 m·(size/512), centred beam, annular mask r ∈ [size/25, 0.49·size),
//! linear dynamic q bins each split into static bins, and D chosen so that
//! Γ·dt runs from 0.002 to 0.30 per frame across the q range.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;

use crate::xpcs::QMap;

#[derive(Clone, Debug)]
pub struct SpeckleConfig {
    pub size: usize,
    pub frames: usize,
    /// Independent modes; contrast β = 1/modes.
    pub modes: usize,
    /// Seconds between frames.
    pub dt: f64,
    /// Photons per pixel per frame at q = 0 is twice this.
    pub mean_count: f64,
    pub n_dq: usize,
    pub sq_per_dq: usize,
    pub seed: u64,
}

impl Default for SpeckleConfig {
    fn default() -> Self {
        SpeckleConfig {
            size: 128,
            frames: 1000,
            modes: 2,
            dt: 1e-3,
            mean_count: 1.0,
            n_dq: 20,
            sq_per_dq: 10,
            seed: 1,
        }
    }
}

pub struct SpeckleData {
    /// Frame-major counts: frame t, pixel p at `frames[t * size² + p]`.
    pub frames: Vec<u16>,
    pub qmap: QMap,
    /// q of every detector pixel, Å⁻¹.
    pub q: Vec<f64>,
    /// Diffusion coefficient in Å²/s: Γ(q) = D q².
    pub diffusion: f64,
    pub beta: f64,
    pub dt: f64,
}

impl SpeckleData {
    /// The true Γ of a dynamic bin, as the reference defines it: D times the
    /// mean over the bin's static bins of their mean q².
    pub fn gamma_of_dq(&self, d: usize) -> f64 {
        let qm = &self.qmap;
        let mut per_s: std::collections::BTreeMap<u32, (f64, f64)> = Default::default();
        for p in 0..qm.mask.len() {
            if qm.mask[p] == 1 && qm.dqmap[p] as usize == d && qm.sqmap[p] > 0 {
                let e = per_s.entry(qm.sqmap[p]).or_default();
                e.0 += self.q[p] * self.q[p];
                e.1 += 1.0;
            }
        }
        let n = per_s.len() as f64;
        self.diffusion * per_s.values().map(|(s, c)| s / c).sum::<f64>() / n
    }
}

pub fn generate(cfg: &SpeckleConfig) -> SpeckleData {
    let n = cfg.size;
    let px = n * n;
    let wavelength = 12.398_419_843 / 10.0; // Å at 10 keV
    let distance = 5.0 * n as f64 / 512.0; // m
    let pixel = 75e-6; // m
    let c = (n as f64 - 1.0) / 2.0;
    let (r_in, r_out) = (n as f64 / 25.0, 0.49 * n as f64);
    let mut q = vec![0f64; px];
    let mut mask = vec![0u8; px];
    for y in 0..n {
        for x in 0..n {
            let r = ((x as f64 - c).powi(2) + (y as f64 - c).powi(2)).sqrt();
            let theta = (r * pixel / distance).atan();
            q[y * n + x] = 4.0 * std::f64::consts::PI / wavelength * (theta / 2.0).sin();
            mask[y * n + x] = u8::from(r >= r_in && r < r_out);
        }
    }
    let qs: Vec<f64> = (0..px).filter(|&p| mask[p] == 1).map(|p| q[p]).collect();
    let q_min = qs.iter().copied().fold(f64::INFINITY, f64::min);
    let q_max = qs.iter().copied().fold(0.0, f64::max) * (1.0 + 1e-9);
    let n_sq = cfg.n_dq * cfg.sq_per_dq;
    let mut sqmap = vec![0u32; px];
    let mut dqmap = vec![0u32; px];
    for p in 0..px {
        if mask[p] == 1 {
            let f = (q[p] - q_min) / (q_max - q_min);
            let s = ((f * n_sq as f64) as usize).min(n_sq - 1);
            sqmap[p] = s as u32 + 1;
            dqmap[p] = (s / cfg.sq_per_dq) as u32 + 1;
        }
    }
    let mean_of = |map: &[u32], bins: usize| -> Vec<f64> {
        let mut acc = vec![(0.0, 0.0); bins];
        for p in 0..px {
            if map[p] > 0 {
                let e = &mut acc[map[p] as usize - 1];
                e.0 += q[p];
                e.1 += 1.0;
            }
        }
        acc.iter()
            .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
            .collect()
    };
    let qmap = QMap {
        width: n,
        height: n,
        sq_values: mean_of(&sqmap, n_sq),
        dq_values: mean_of(&dqmap, cfg.n_dq),
        mask,
        sqmap,
        dqmap,
    };
    let diffusion = 0.30 / (cfg.dt * q_max * q_max);
    let qc = q_max / 4.0;
    let modes = cfg.modes.max(1);
    let frames_n = cfg.frames;
    // Each pixel's series is independent: generate columns in parallel, one
    // seeded generator per pixel so the data do not depend on thread count.
    let columns: Vec<Vec<u16>> = (0..px)
        .into_par_iter()
        .map(|p| {
            if qmap.mask[p] == 0 {
                return Vec::new();
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ p as u64,
            );
            let gamma = diffusion * q[p] * q[p];
            let a = (-gamma * cfg.dt).exp();
            let b = (1.0 - a * a).sqrt();
            let i0 = cfg.mean_count * 2.0 / (1.0 + (q[p] / qc).powi(2));
            let half = std::f64::consts::FRAC_1_SQRT_2;
            let mut re: Vec<f64> = (0..modes)
                .map(|_| half * rng.sample::<f64, _>(StandardNormal))
                .collect();
            let mut im: Vec<f64> = (0..modes)
                .map(|_| half * rng.sample::<f64, _>(StandardNormal))
                .collect();
            let mut out = Vec::with_capacity(frames_n);
            for _ in 0..frames_n {
                let s: f64 = (0..modes)
                    .map(|m| re[m] * re[m] + im[m] * im[m])
                    .sum::<f64>()
                    / modes as f64;
                let mean = i0 * s;
                let count = if mean > 0.0 {
                    Poisson::new(mean)
                        .map(|d| d.sample(&mut rng))
                        .unwrap_or(0.0)
                } else {
                    0.0
                };
                out.push(count.min(f64::from(u16::MAX)) as u16);
                for m in 0..modes {
                    re[m] = a * re[m] + b * half * rng.sample::<f64, _>(StandardNormal);
                    im[m] = a * im[m] + b * half * rng.sample::<f64, _>(StandardNormal);
                }
            }
            out
        })
        .collect();
    let mut frames = vec![0u16; frames_n * px];
    for (p, col) in columns.iter().enumerate() {
        for (t, &v) in col.iter().enumerate() {
            frames[t * px + p] = v;
        }
    }
    SpeckleData {
        frames,
        qmap,
        q,
        diffusion,
        beta: 1.0 / modes as f64,
        dt: cfg.dt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xpcs::{fit::fit_g2, qbin::normalize, Multitau};

    /// Generate → correlate → normalise → fit, and compare with the truth.
    #[test]
    fn multitau_recovers_diffusion_and_contrast() {
        let cfg = SpeckleConfig {
            size: 128,
            frames: 2000,
            ..Default::default()
        };
        let data = generate(&cfg);
        let pixels = data.qmap.valid_pixels();
        assert!(pixels.len() > 12_000, "{}", pixels.len());
        let mut mt = Multitau::new(cfg.frames as u64, pixels.len());
        let npx = data.qmap.mask.len();
        for chunk in data.frames.chunks(256 * npx) {
            let f: Vec<f32> = chunk
                .chunks_exact(npx)
                .flat_map(|fr| pixels.iter().map(move |&p| f32::from(fr[p])))
                .collect();
            mt.push(&f).unwrap();
        }
        let sums = mt.finish().unwrap();
        let res = normalize(&sums, &data.qmap, &pixels);
        let tau_s: Vec<f64> = res.tau.iter().map(|&t| t as f64 * data.dt).collect();
        let (mut num, mut den) = (0.0, 0.0);
        let mut betas = Vec::new();
        for d in 1..=data.qmap.n_dq() {
            let truth = data.gamma_of_dq(d);
            // Resolvable: 1 ≤ 1/(2Γ dt) ≤ N/20 frames, as in the reference's check.
            let decay_frames = 1.0 / (2.0 * truth * data.dt);
            if !(1.0..=cfg.frames as f64 / 20.0).contains(&decay_frames) {
                continue;
            }
            let g: Vec<f64> = res.g2.column(d - 1).iter().map(|&x| f64::from(x)).collect();
            let e: Vec<f64> = res
                .g2_err
                .column(d - 1)
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let f = fit_g2(&tau_s, &g, &e).unwrap();
            let q2 = truth / data.diffusion;
            num += f.gamma * q2;
            den += q2 * q2;
            betas.push(f.beta);
        }
        assert!(betas.len() >= 8, "only {} resolvable bins", betas.len());
        let d_fit = num / den;
        let d_err = (d_fit - data.diffusion).abs() / data.diffusion;
        let beta = betas.iter().sum::<f64>() / betas.len() as f64;
        eprintln!(
            "{} resolvable bins: D off by {:.2} %, mean beta {beta:.4} (true 0.5)",
            betas.len(),
            100.0 * d_err
        );
        assert!(
            d_err < 0.03,
            "D fitted {d_fit:.4e}, true {:.4e} ({:.2} %)",
            data.diffusion,
            100.0 * d_err
        );
        assert!((beta - 0.5).abs() < 0.03, "beta {beta:.4}");
    }
}
