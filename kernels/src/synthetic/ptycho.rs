//! Simulated far-field ptychography with known object and probe, following
//! the reference's recipe: a defocused focused beam for the probe, a Fermat
//! spiral (or jittered raster) scan at 70 % overlap, pty-chi's forward model
//! (`I_j = |fft2(P ⊙ O_j)|²`, unnormalised), Poisson counts at 1e6 photons
//! per pattern, stored DC-centred as a detector records them.
//!
//! The object is `A·e^{iφ}` with A = 0.5 + 0.5·a and φ = ±1 rad·(2b − 1),
//! where a and b are procedural test scenes (smooth blobs plus discs and
//! bars with sharp edges) in [0, 1] — natural-image statistics without
//! shipping images.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use serde::{Deserialize, Serialize};

use crate::ptycho::fft::{fftshift, transpose, Fft2};
use crate::ptycho::metrics::illuminated;
use crate::ptycho::model::{Data, Field, Probe};

/// Scan patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scan {
    Fermat,
    Raster,
}

/// What to simulate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scene {
    /// Probe and pattern size.
    pub n: usize,
    pub positions: usize,
    pub scan: Scan,
    /// Linear overlap: the scan step is `(1 − overlap)·D90`.
    pub overlap: f64,
    /// Mean photons per pattern.
    pub photons: f64,
    /// Object margin around the scanned area, px.
    pub margin: usize,
    /// Poisson counts (off: the exact intensities).
    pub noise: bool,
    pub seed: u64,
}

impl Scene {
    /// The reference's presets: `tiny` (raster 36, 64² probe), `small`
    /// (raster 100), `medium` (Fermat 256), `large` (Fermat 1024); 128²
    /// probe unless said.
    pub fn preset(name: &str) -> Result<Scene, String> {
        let base = Scene {
            n: 128,
            positions: 256,
            scan: Scan::Fermat,
            overlap: 0.70,
            photons: 1e6,
            margin: 16,
            noise: true,
            seed: 7,
        };
        Ok(match name {
            "tiny" => Scene {
                n: 64,
                positions: 36,
                scan: Scan::Raster,
                ..base
            },
            "small" => Scene {
                positions: 100,
                scan: Scan::Raster,
                ..base
            },
            "medium" => base,
            "large" => Scene {
                positions: 1024,
                ..base
            },
            other => {
                return Err(format!(
                    "unknown dataset size {other:?} (tiny, small, medium, large)"
                ))
            }
        })
    }
}

/// A simulated dataset and its truth.
pub struct Simulated {
    /// `(N, n, n)` counts, DC at the centre.
    pub intensities: Vec<f32>,
    /// Probe-centre offsets (y, x) from the object centre, px.
    pub centres: Vec<[f64; 2]>,
    pub object: Field,
    pub probe: Probe,
    /// The start for joint probe retrieval: the same pupil at 0.8× the
    /// defocus, scaled to the data.
    pub init_probe: Probe,
    /// Where the summed probe intensity reaches 10 % of its maximum.
    pub mask: Vec<bool>,
    /// 90 %-power diameter of the probe, px.
    pub d90: f64,
    /// Mean nearest-neighbour distance of the scan, px.
    pub step: f64,
}

impl Simulated {
    pub fn data(&self) -> Result<Data, String> {
        Data::from_centres(
            &self.intensities,
            self.probe.n,
            &self.centres,
            (self.object.rows, self.object.cols),
        )
    }
}

/// The probe: `ifft2{pupil(k)·e^{i c k²}}` with a soft-edged pupil of
/// radius n/8 and `c` such that the geometric defocused disc is `0.39·n`
/// across (scaled by `defocus`), centred in the n×n window.
fn probe(n: usize, defocus: f64) -> Vec<Complex32> {
    let k0 = n as f64 / 8.0;
    let d = 0.39 * n as f64 * defocus;
    let c = std::f64::consts::PI * d / (2.0 * n as f64 * k0);
    let wrap = |i: usize| {
        let i = i as f64;
        if i >= n as f64 / 2.0 {
            i - n as f64
        } else {
            i
        }
    };
    let mut spec: Vec<Complex32> = (0..n * n)
        .map(|i| {
            let (ky, kx) = (wrap(i / n), wrap(i % n));
            let k = ky.hypot(kx);
            let pupil = 0.5 * (1.0 - ((k - k0) / 1.0).tanh());
            let ph = c * k * k;
            Complex32::from_polar(pupil as f32, ph as f32)
        })
        .collect();
    // F⁻¹ of a transposed spectrum: the pupil is symmetric, so the layout
    // does not matter; then centre the beam.
    let mut out = vec![Complex32::default(); n * n];
    Fft2::new(n).inverse(&mut spec, &mut out);
    fftshift(&mut out, n);
    out
}

/// 90 %-power diameter about the intensity centroid.
fn d90(p: &[Complex32], n: usize) -> f64 {
    let w: Vec<f64> = p.iter().map(|v| f64::from(v.norm_sqr())).collect();
    let total: f64 = w.iter().sum();
    let (cy, cx) = w.iter().enumerate().fold((0.0, 0.0), |(y, x), (i, &v)| {
        (y + v * (i / n) as f64, x + v * (i % n) as f64)
    });
    let (cy, cx) = (cy / total, cx / total);
    let mut by_r: Vec<(f64, f64)> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| (((i / n) as f64 - cy).hypot((i % n) as f64 - cx), v))
        .collect();
    by_r.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut acc = 0.0;
    for (r, v) in by_r {
        acc += v;
        if acc >= 0.9 * total {
            return 2.0 * r;
        }
    }
    n as f64
}

fn mean_nn(p: &[[f64; 2]]) -> f64 {
    let nn: f64 = p
        .par_iter()
        .enumerate()
        .map(|(i, a)| {
            p.iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    nn / p.len() as f64
}

/// Scan positions (y, x) about 0 with mean nearest-neighbour distance
/// `step`, rounded to whole pixels.
fn scan(s: &Scene, step: f64, rng: &mut impl Rng) -> Vec<[f64; 2]> {
    let pts: Vec<[f64; 2]> = match s.scan {
        Scan::Fermat => {
            let golden = 137.508f64.to_radians();
            let unit: Vec<[f64; 2]> = (0..s.positions)
                .map(|i| {
                    let (r, t) = ((i as f64).sqrt(), i as f64 * golden);
                    [r * t.sin(), r * t.cos()]
                })
                .collect();
            let c = if s.positions > 1 {
                step / mean_nn(&unit)
            } else {
                0.0
            };
            unit.iter().map(|p| [p[0] * c, p[1] * c]).collect()
        }
        Scan::Raster => {
            let side = (s.positions as f64).sqrt().ceil() as usize;
            let half = (side as f64 - 1.0) / 2.0;
            (0..s.positions)
                .map(|i| {
                    let (r, c) = ((i / side) as f64 - half, (i % side) as f64 - half);
                    [
                        r * step + rng.random_range(-1.0..1.0),
                        c * step + rng.random_range(-1.0..1.0),
                    ]
                })
                .collect()
        }
    };
    pts.iter().map(|p| [p[0].round(), p[1].round()]).collect()
}

/// A test scene in [0, 1]: smooth blobs plus sharp discs and bars.
fn scene(rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<f32> {
    let mut v = vec![0f32; rows * cols];
    let size = rows.min(cols) as f64;
    for _ in 0..40 {
        let (cy, cx) = (
            rng.random_range(0.0..rows as f64),
            rng.random_range(0.0..cols as f64),
        );
        let s = rng.random_range(0.02..0.12) * size;
        let a = rng.random_range(-1.0..1.0);
        for r in 0..rows {
            for c in 0..cols {
                let d2 = ((r as f64 - cy).powi(2) + (c as f64 - cx).powi(2)) / (2.0 * s * s);
                if d2 < 12.0 {
                    v[r * cols + c] += (a * (-d2).exp()) as f32;
                }
            }
        }
    }
    for k in 0..30 {
        let (cy, cx) = (
            rng.random_range(0.0..rows as f64),
            rng.random_range(0.0..cols as f64),
        );
        let a = rng.random_range(-0.8..0.8) as f32;
        let (h, w) = (
            rng.random_range(0.01..0.08) * size,
            rng.random_range(0.01..0.08) * size,
        );
        for r in 0..rows {
            for c in 0..cols {
                let (dy, dx) = (r as f64 - cy, c as f64 - cx);
                let inside = if k % 2 == 0 {
                    dy.hypot(dx) < h
                } else {
                    dy.abs() < h && dx.abs() < w
                };
                if inside {
                    v[r * cols + c] += a;
                }
            }
        }
    }
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    v.iter().map(|x| (x - lo) / span).collect()
}

/// Simulates `s`.
pub fn simulate(s: &Scene) -> Result<Simulated, String> {
    if s.n < 8 || !s.n.is_multiple_of(2) || s.positions == 0 {
        return Err(format!(
            "probe size {} (even, ≥ 8) and {} positions (≥ 1)",
            s.n, s.positions
        ));
    }
    let n = s.n;
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let raw = probe(n, 1.0);
    let d90 = d90(&raw, n);
    let step = (1.0 - s.overlap) * d90;
    let centres = scan(s, step, &mut rng);
    let (rows, cols) = Data::shape_for(&centres, n, s.margin);
    let (a, b) = (scene(rows, cols, &mut rng), scene(rows, cols, &mut rng));
    let object = Field {
        rows,
        cols,
        data: a
            .iter()
            .zip(&b)
            .map(|(&a, &b)| Complex32::from_polar(0.5 + 0.5 * a, 2.0 * b - 1.0))
            .collect(),
    };
    // Corners through the engines' own conversion.
    let zeros = vec![0f32; centres.len() * n * n];
    let geometry = Data::from_centres(&zeros, n, &centres, (rows, cols))?;
    // Scale the probe to the photon budget (Parseval: Σ|FΨ|² = n²Σ|ψ|²).
    let mut patch = vec![Complex32::default(); n * n];
    let mut mean = 0.0f64;
    for &c in &geometry.corners {
        object.extract(c, n, &mut patch);
        mean += raw
            .iter()
            .zip(&patch)
            .map(|(p, o)| f64::from((p * o).norm_sqr()))
            .sum::<f64>();
    }
    mean *= (n * n) as f64 / centres.len() as f64;
    let scale = (s.photons / mean).sqrt() as f32;
    let probe_data: Vec<Complex32> = raw.iter().map(|v| v * scale).collect();
    let truth_probe = Probe {
        n,
        modes: 1,
        data: probe_data,
    };
    let seed = s.seed;
    let intensities: Vec<f32> = geometry
        .corners
        .par_iter()
        .enumerate()
        .map_init(
            || {
                (
                    Fft2::new(n),
                    vec![Complex32::default(); 2 * n * n],
                    vec![0f32; 2 * n * n],
                )
            },
            |(fft, buf, re), (j, &c)| {
                let (psi, spec) = buf.split_at_mut(n * n);
                object.extract(c, n, psi);
                for (w, p) in psi.iter_mut().zip(&truth_probe.data) {
                    *w *= p;
                }
                fft.forward(psi, spec);
                let (t, i) = re.split_at_mut(n * n);
                for (x, v) in t.iter_mut().zip(spec.iter()) {
                    *x = v.norm_sqr();
                }
                transpose(t, i, n);
                fftshift(i, n);
                if s.noise {
                    let mut r = rand::rngs::StdRng::seed_from_u64(
                        seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    for v in i.iter_mut() {
                        *v = if *v > 0.0 {
                            Poisson::new(f64::from(*v))
                                .map(|p| p.sample(&mut r) as f32)
                                .unwrap_or(0.0)
                        } else {
                            0.0
                        };
                    }
                }
                i.to_vec()
            },
        )
        .flatten()
        .collect();
    // The initial probe: 0.8× defocus, same total intensity as the data.
    let init = probe(n, 0.8);
    let mean_counts: f64 =
        intensities.iter().map(|&v| f64::from(v)).sum::<f64>() / centres.len() as f64;
    let init_power: f64 =
        init.iter().map(|v| f64::from(v.norm_sqr())).sum::<f64>() * (n * n) as f64;
    let k = (mean_counts / init_power).sqrt() as f32;
    let init_probe = Probe {
        n,
        modes: 1,
        data: init.iter().map(|v| v * k).collect(),
    };
    let mask = illuminated(&truth_probe, &geometry.corners, (rows, cols), 0.1);
    Ok(Simulated {
        intensities,
        centres,
        object,
        probe: truth_probe,
        init_probe,
        mask,
        d90,
        step: mean_nn(&scan_f64(&geometry)),
    })
}

/// Files written by [`write_dataset`].
#[derive(Clone, Debug, Serialize)]
pub struct DatasetFiles {
    /// The self-describing dataset (with the truth).
    pub data: std::path::PathBuf,
    /// The Ptychodus pair, when asked for.
    pub dp: Option<std::path::PathBuf>,
    pub meta: Option<std::path::PathBuf>,
    pub positions: usize,
    pub n: usize,
    pub object_shape: (usize, usize),
}

/// Object pixel of the simulated geometry (0.124 nm, 0.774 m, 75 µm
/// detector pixels, 128 px: λz/(n·p) = 10 nm), m.
pub const PIXEL_M: f64 = 10e-9;

/// Simulates `s` and writes `dir/NAME.h5` (and with `ptychodus` the pair
/// `NAME_dp.hdf5` + `NAME_meta.hdf5`).
pub fn write_dataset(
    s: &Scene,
    dir: &std::path::Path,
    name: &str,
    ptychodus: bool,
) -> Result<DatasetFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let sim = simulate(s)?;
    let d = sim.data()?;
    let path = dir.join(format!("{name}.h5"));
    crate::ptycho::io::write_dataset(
        &path,
        &sim.intensities,
        s.n,
        &sim.centres,
        &d.corners,
        Some((&sim.object, &sim.probe, &sim.mask)),
        Some(&sim.init_probe),
        &[
            ("scene", serde_json::to_string(s).unwrap_or_default()),
            ("d90_px", format!("{:.3}", sim.d90)),
            ("step_px", format!("{:.3}", sim.step)),
            ("object_pixel_m", format!("{PIXEL_M:e}")),
        ],
    )?;
    let (dp, meta) = if ptychodus {
        let (dp, meta) = (
            dir.join(format!("{name}_dp.hdf5")),
            dir.join(format!("{name}_meta.hdf5")),
        );
        crate::ptycho::io::write_ptychodus(
            &dp,
            &meta,
            &sim.intensities,
            s.n,
            &sim.centres,
            &sim.init_probe,
            &Field::filled(sim.object.rows, sim.object.cols, Complex32::new(1.0, 0.0)),
            PIXEL_M,
        )?;
        (Some(dp), Some(meta))
    } else {
        (None, None)
    };
    Ok(DatasetFiles {
        data: path,
        dp,
        meta,
        positions: d.positions(),
        n: s.n,
        object_shape: d.shape,
    })
}

fn scan_f64(d: &Data) -> Vec<[f64; 2]> {
    d.corners.iter().map(|c| [c.0 as f64, c.1 as f64]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_dataset_matches_its_model() {
        let mut s = Scene::preset("tiny").unwrap();
        s.noise = false;
        let sim = simulate(&s).unwrap();
        let n = s.n;
        assert_eq!(sim.intensities.len(), s.positions * n * n);
        // The photon budget, exactly without noise.
        let mean: f64 =
            sim.intensities.iter().map(|&v| f64::from(v)).sum::<f64>() / s.positions as f64;
        assert!((mean / s.photons - 1.0).abs() < 1e-3, "{mean}");
        // DC at the centre: the far field is the pupil disc about DC, so the
        // patterns' intensity centroid is at (n/2, n/2).
        let (mut w, mut cy, mut cx) = (0.0, 0.0, 0.0);
        for (i, &v) in sim.intensities.iter().enumerate() {
            let k = i % (n * n);
            w += f64::from(v);
            cy += f64::from(v) * (k / n) as f64;
            cx += f64::from(v) * (k % n) as f64;
        }
        let (cy, cx) = (cy / w, cx / w);
        let h = (n / 2) as f64;
        assert!((cy - h).abs() < 1.0 && (cx - h).abs() < 1.0, "{cy},{cx}");
        // The probe's D90 is about 0.39 n, the scan step 30 % of it.
        assert!(
            (sim.d90 / (0.39 * n as f64) - 1.0).abs() < 0.2,
            "{}",
            sim.d90
        );
        assert!(
            (sim.step / (0.3 * sim.d90) - 1.0).abs() < 0.25,
            "{} {}",
            sim.step,
            sim.d90
        );
        assert!(sim.mask.iter().any(|&m| m) && sim.mask.iter().any(|&m| !m));
        let amp: Vec<f32> = sim.object.data.iter().map(|v| v.norm()).collect();
        assert!(amp.iter().all(|&a| (0.49..=1.01).contains(&a)));
    }
}
