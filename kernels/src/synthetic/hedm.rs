//! Synthetic HEDM frames with known peaks: MIDAS's factored pseudo-Voigt,
//! point-sampled at pixel centres on a flat background, Poisson counts.
//!
//! Peak parameters follow the reference data set: heights log-uniform in
//! [100, 3000] counts, Mu uniform in [0, 1], Gaussian σ uniform in
//! [0.6, 1.6] px and Lorentzian HWHM uniform in [0.5, 1.5] px, independently
//! per axis; centres at least 8 px apart. In cartesian frames the widths are
//! along rows and columns; in polar frames peaks are defined in (R, Eta) about
//! the frame centre (R in [200, 975] px, |Eta| ≤ 160°), azimuthal widths
//! converted to degrees at the peak's radius — MIDAS's fitting coordinates.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hedm::{model, Geometry};

/// What to generate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scene {
    pub rows: usize,
    pub cols: usize,
    pub peaks_per_frame: usize,
    pub background: f64,
    pub polar: bool,
    pub seed: u64,
    /// Minimum distance between peak centres, px.
    pub min_separation: f64,
}

impl Default for Scene {
    fn default() -> Self {
        Scene {
            rows: 2048,
            cols: 2048,
            peaks_per_frame: 300,
            background: 10.0,
            polar: false,
            seed: 1234,
            min_separation: 8.0,
        }
    }
}

/// A true peak: MIDAS parameters in the scene's fitting coordinates, and its
/// centre in pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TruePeak {
    pub frame: u32,
    /// `[IMax, U, V, Mu, SigmaGU, GammaLU, SigmaGV, GammaLV]`.
    pub params: [f64; 8],
    pub row: f64,
    pub col: f64,
}

impl Scene {
    pub fn geometry(&self) -> Geometry {
        if self.polar {
            Geometry::Polar {
                row0: (self.rows as f64 - 1.0) / 2.0,
                col0: (self.cols as f64 - 1.0) / 2.0,
            }
        } else {
            Geometry::Cartesian
        }
    }

    /// Frame `index`: counts (row-major) and the peaks in it.
    pub fn frame(&self, index: u32) -> (Vec<u16>, Vec<TruePeak>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let geom = self.geometry();
        let peaks = self.place(&mut rng, index, geom);
        let mut mean = vec![self.background; self.rows * self.cols];
        // ±32 px holds every tail above a tenth of a count.
        const HALF: i64 = 32;
        for p in &peaks {
            let (r0, c0) = (p.row.round() as i64, p.col.round() as i64);
            for r in (r0 - HALF).max(0)..(r0 + HALF + 1).min(self.rows as i64) {
                for c in (c0 - HALF).max(0)..(c0 + HALF + 1).min(self.cols as i64) {
                    let (u, v) = geom.coords(r as f64, c as f64);
                    mean[r as usize * self.cols + c as usize] += model::peak(&p.params, u, v);
                }
            }
        }
        // Counts in blocks of rows, each with its own seeded generator, so
        // the frame is the same whatever the number of threads.
        let mut counts = vec![0u16; mean.len()];
        let block = 64 * self.cols;
        let base = rng.random::<u64>();
        counts
            .par_chunks_mut(block)
            .zip(mean.par_chunks(block))
            .enumerate()
            .for_each(|(b, (out, m))| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    base ^ (b as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                );
                for (o, &m) in out.iter_mut().zip(m) {
                    let k: f64 = Poisson::new(m.max(1e-9))
                        .map(|d| d.sample(&mut rng))
                        .unwrap_or(0.0);
                    *o = k.min(u16::MAX as f64) as u16;
                }
            });
        (counts, peaks)
    }

    fn place(&self, rng: &mut impl Rng, frame: u32, geom: Geometry) -> Vec<TruePeak> {
        let cell = self.min_separation.max(1.0);
        let gcols = (self.cols as f64 / cell).ceil() as usize + 1;
        let grows = (self.rows as f64 / cell).ceil() as usize + 1;
        let mut grid: Vec<Vec<(f64, f64)>> = vec![Vec::new(); gcols * grows];
        let mut out = Vec::with_capacity(self.peaks_per_frame);
        let margin = 16.0;
        let mut tries = 0;
        while out.len() < self.peaks_per_frame && tries < self.peaks_per_frame * 1000 {
            tries += 1;
            let (row, col, u, v, w_scale) = match geom {
                Geometry::Cartesian => {
                    let row = rng.random_range(margin..self.rows as f64 - margin);
                    let col = rng.random_range(margin..self.cols as f64 - margin);
                    (row, col, row, col, None)
                }
                Geometry::Polar { .. } => {
                    let rmax = (self.rows.min(self.cols) as f64 / 2.0 - margin).min(975.0);
                    let rmin = 200f64.min(rmax / 2.0);
                    let r = rng.random_range(rmin..rmax);
                    let eta: f64 = rng.random_range(-160.0..160.0);
                    let (row, col) = geom.pixel(r, eta);
                    // Azimuthal widths in degrees at this radius.
                    (row, col, r, eta, Some((1.0 / r).to_degrees()))
                }
            };
            let (gr, gc) = ((row / cell) as usize, (col / cell) as usize);
            let mut clear = true;
            'near: for dr in gr.saturating_sub(1)..=(gr + 1).min(grows - 1) {
                for dc in gc.saturating_sub(1)..=(gc + 1).min(gcols - 1) {
                    for &(r2, c2) in &grid[dr * gcols + dc] {
                        if (r2 - row).hypot(c2 - col) < self.min_separation {
                            clear = false;
                            break 'near;
                        }
                    }
                }
            }
            if !clear {
                continue;
            }
            grid[gr * gcols + gc].push((row, col));
            let [height, mu, sgu, glu, mut sgv, mut glv] = random_profile(rng);
            if let Some(s) = w_scale {
                sgv *= s;
                glv *= s;
            }
            out.push(TruePeak {
                frame,
                params: [height, u, v, mu, sgu, glu, sgv, glv],
                row,
                col,
            });
        }
        out
    }
}

/// A peak's height and shape, `[IMax, Mu, SigmaGU, GammaLU, SigmaGV,
/// GammaLV]` (widths in px), from the reference's distribution: heights
/// log-uniform in 100–3000 counts, Mu uniform, Gaussian σ in 0.6–1.6 px and
/// Lorentzian γ in 0.5–1.5 px independently per axis.
pub(crate) fn random_profile(rng: &mut impl Rng) -> [f64; 6] {
    [
        (rng.random_range(100f64.ln()..3000f64.ln())).exp(),
        rng.random_range(0.0..1.0),
        rng.random_range(0.6..1.6),
        rng.random_range(0.5..1.5),
        rng.random_range(0.6..1.6),
        rng.random_range(0.5..1.5),
    ]
}

/// Files written by [`write_dataset`].
#[derive(Clone, Debug, Serialize)]
pub struct DatasetFiles {
    /// The frame stack (`/entry/data/data`, uint16).
    pub frames: std::path::PathBuf,
    /// The true peaks, JSON: the scene and one entry per peak.
    pub truth: std::path::PathBuf,
    pub peaks: usize,
}

/// Writes `count` frames of `scene` to `dir/NAME.h5` and the truth to
/// `dir/NAME_truth.json`; `progress(done)` after each frame.
pub fn write_dataset(
    scene: &Scene,
    count: usize,
    dir: &std::path::Path,
    name: &str,
    progress: &mut dyn FnMut(usize),
) -> Result<DatasetFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let frames_path = dir.join(format!("{name}.h5"));
    let truth_path = dir.join(format!("{name}_truth.json"));
    let mut frames = Vec::with_capacity(count);
    let mut truth = Vec::new();
    for i in 0..count {
        let (f, p) = scene.frame(i as u32);
        frames.push(f);
        truth.extend(p);
        progress(i + 1);
    }
    crate::hedm::io::write_stack(&frames_path, &frames, scene.rows, scene.cols)?;
    let doc = serde_json::json!({ "scene": scene, "frames": count, "peaks": truth });
    std::fs::write(&truth_path, serde_json::to_string(&doc).unwrap_or_default())
        .map_err(|e| format!("{}: cannot write: {e}", truth_path.display()))?;
    Ok(DatasetFiles {
        frames: frames_path,
        truth: truth_path,
        peaks: truth.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reproducible_and_hold_their_peaks() {
        let s = Scene {
            rows: 256,
            cols: 256,
            peaks_per_frame: 20,
            ..Scene::default()
        };
        let (a, pa) = s.frame(0);
        let (b, pb) = s.frame(0);
        assert_eq!(a, b);
        assert_eq!(pa, pb);
        assert_eq!(pa.len(), 20);
        for p in &pa {
            let v = a[p.row.round() as usize * 256 + p.col.round() as usize] as f64;
            // The peak pixel stands out of the background of 10.
            assert!(
                v > 10.0 + 0.2 * p.params[0] - 5.0 * p.params[0].sqrt(),
                "{v} {p:?}"
            );
        }
        let (c, _) = s.frame(1);
        assert_ne!(a, c);
        let polar = Scene {
            polar: true,
            rows: 512,
            cols: 512,
            ..s
        };
        let (_, pp) = polar.frame(0);
        for p in &pp {
            let (u, v) = polar.geometry().coords(p.row, p.col);
            assert!((u - p.params[1]).abs() < 1e-9 && (v - p.params[2]).abs() < 1e-9);
        }
    }
}
