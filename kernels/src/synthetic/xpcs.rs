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
//!
//! [`Speckle`] produces frames in chunks from per-pixel state, so a dataset
//! of any length is written with memory bounded by one chunk
//! ([`write_dataset`]); [`generate`] keeps a short series in memory for tests.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use serde_json::json;

use crate::xpcs::io::{write_metadata, write_qmap, Geometry, Metadata, QMapFile, RawWriter};
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

/// Everything about a synthetic measurement except its frames: detector
/// geometry, q partition and the true dynamics.
pub struct Scene {
    /// The partition as written to the qmap file (bins numbered 1.. over
    /// the non-empty bins only, as pySimpleMask does).
    pub qmap_file: QMapFile,
    /// q of every detector pixel, Å⁻¹.
    pub q: Vec<f64>,
    /// Diffusion coefficient in Å²/s: Γ(q) = D q².
    pub diffusion: f64,
    pub beta: f64,
    pub dt: f64,
    /// q where the mean intensity falls to half its q = 0 value.
    pub q_half: f64,
}

impl Scene {
    pub fn new(cfg: &SpeckleConfig) -> Self {
        let n = cfg.size;
        let px = n * n;
        let energy_kev = 10.0;
        let wavelength = 12.398_419_843 / energy_kev; // Å
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
        let width = (q_max - q_min) / n_sq as f64;
        // Fine bin of each valid pixel on the full linear grid (0-based).
        let fine: Vec<Option<usize>> = (0..px)
            .map(|p| (mask[p] == 1).then(|| (((q[p] - q_min) / width) as usize).min(n_sq - 1)))
            .collect();
        let static_centres: Vec<f64> = (0..n_sq)
            .map(|i| q_min + (i as f64 + 0.5) * width)
            .collect();
        let dynamic_centres: Vec<f64> = (0..cfg.n_dq)
            .map(|i| q_min + (i as f64 + 0.5) * width * cfg.sq_per_dq as f64)
            .collect();
        let (sqmap, static_mapping) = compress(&fine, n_sq);
        let coarse: Vec<Option<usize>> =
            fine.iter().map(|f| f.map(|s| s / cfg.sq_per_dq)).collect();
        let (dqmap, dynamic_mapping) = compress(&coarse, cfg.n_dq);
        let qmap = QMap {
            width: n,
            height: n,
            sq_values: static_mapping
                .iter()
                .map(|&i| static_centres[i as usize])
                .collect(),
            dq_values: dynamic_mapping
                .iter()
                .map(|&i| dynamic_centres[i as usize])
                .collect(),
            mask,
            sqmap,
            dqmap,
        };
        let modes = cfg.modes.max(1);
        Scene {
            qmap_file: QMapFile {
                qmap,
                geometry: Geometry {
                    beam_center_x: c,
                    beam_center_y: c,
                    pixel_size: pixel,
                    detector_distance: distance,
                    energy_kev,
                },
                static_centres,
                static_mapping,
                dynamic_centres,
                dynamic_mapping,
            },
            diffusion: 0.30 / (cfg.dt * q_max * q_max),
            q_half: q_max / 4.0,
            q,
            beta: 1.0 / modes as f64,
            dt: cfg.dt,
        }
    }

    pub fn qmap(&self) -> &QMap {
        &self.qmap_file.qmap
    }

    /// The true Γ of a dynamic bin, as the reference defines it: D times the
    /// mean over the bin's static bins of their mean q².
    pub fn gamma_of_dq(&self, d: usize) -> f64 {
        let qm = self.qmap();
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

    /// Mean counts per frame of pixel `p` (zero where masked).
    pub fn mean_intensity(&self, p: usize, mean_count: f64) -> f64 {
        if self.qmap().mask[p] == 0 {
            return 0.0;
        }
        mean_count * 2.0 / (1.0 + (self.q[p] / self.q_half).powi(2))
    }

    /// The truth a fit is checked against, as written to `ground_truth.json`.
    pub fn truth_json(&self, cfg: &SpeckleConfig) -> serde_json::Value {
        let bins: Vec<_> = (1..=self.qmap().n_dq())
            .map(|d| {
                let gamma = self.gamma_of_dq(d);
                json!({
                    "dq": d,
                    "q": self.qmap().dq_values[d - 1],
                    "gamma": gamma,
                    "decay_frames": 1.0 / (2.0 * gamma * self.dt),
                })
            })
            .collect();
        json!({
            "model": "g2 = 1 + beta * exp(-2 * gamma * tau), gamma = D * q^2",
            "size": cfg.size,
            "frames": cfg.frames,
            "frame_time": self.dt,
            "beta": self.beta,
            "diffusion": self.diffusion,
            "modes": cfg.modes,
            "mean_count": cfg.mean_count,
            "seed": cfg.seed,
            "bins": bins,
        })
    }
}

/// Numbers the non-empty bins of `fine` 1.. in natural order; returns the map
/// (0 = no bin) and, per compressed bin, its index on the full grid.
fn compress(fine: &[Option<usize>], n: usize) -> (Vec<u32>, Vec<i64>) {
    let mut used = vec![false; n];
    for &f in fine.iter().flatten() {
        used[f] = true;
    }
    let mapping: Vec<i64> = (0..n).filter(|&i| used[i]).map(|i| i as i64).collect();
    let mut number = vec![0u32; n];
    for (k, &i) in mapping.iter().enumerate() {
        number[i as usize] = k as u32 + 1;
    }
    let map = fine.iter().map(|f| f.map_or(0, |i| number[i])).collect();
    (map, mapping)
}

/// The state of one valid pixel: its own generator (so data do not depend on
/// the thread count or chunking) and its speckle modes.
struct PixelState {
    rng: SmallRng,
    /// AR(1) decay per frame and innovation scale.
    a: f64,
    b: f64,
    i0: f64,
    /// Real and imaginary parts of the modes, interleaved.
    field: Vec<f64>,
}

/// An endless stream of frames of one scene.
pub struct Speckle {
    pixels: Vec<usize>,
    states: Vec<PixelState>,
    detector: usize,
}

/// Pixels per parallel work item.
const BLOCK: usize = 2048;

impl Speckle {
    pub fn new(scene: &Scene, cfg: &SpeckleConfig) -> Self {
        let pixels = scene.qmap().valid_pixels();
        let modes = cfg.modes.max(1);
        let half = std::f64::consts::FRAC_1_SQRT_2;
        let states = pixels
            .par_iter()
            .map(|&p| {
                let mut rng = SmallRng::seed_from_u64(
                    cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ p as u64,
                );
                let gamma = scene.diffusion * scene.q[p] * scene.q[p];
                let a = (-gamma * cfg.dt).exp();
                let field = (0..2 * modes)
                    .map(|_| half * rng.sample::<f64, _>(StandardNormal))
                    .collect();
                PixelState {
                    rng,
                    a,
                    b: (1.0 - a * a).sqrt() * half,
                    i0: scene.mean_intensity(p, cfg.mean_count),
                    field,
                }
            })
            .collect();
        Speckle {
            pixels,
            states,
            detector: cfg.size * cfg.size,
        }
    }

    /// The next `count` frames, frame-major over the whole detector.
    pub fn next_frames(&mut self, count: usize) -> Vec<u16> {
        let columns: Vec<Vec<u16>> = self
            .states
            .par_chunks_mut(BLOCK)
            .map(|block| {
                let len = block.len();
                let mut out = vec![0u16; count * len];
                for (j, st) in block.iter_mut().enumerate() {
                    let modes = st.field.len() / 2;
                    for t in 0..count {
                        let s = st.field.iter().map(|v| v * v).sum::<f64>() / modes as f64;
                        let mean = st.i0 * s;
                        let n = if mean > 0.0 {
                            Poisson::new(mean)
                                .map(|d| d.sample(&mut st.rng))
                                .unwrap_or(0.0)
                        } else {
                            0.0
                        };
                        out[t * len + j] = n.min(f64::from(u16::MAX)) as u16;
                        for v in st.field.iter_mut() {
                            *v = st.a * *v + st.b * st.rng.sample::<f64, _>(StandardNormal);
                        }
                    }
                }
                out
            })
            .collect();
        let mut frames = vec![0u16; count * self.detector];
        for (bi, col) in columns.iter().enumerate() {
            let pix = &self.pixels[bi * BLOCK..(bi * BLOCK + BLOCK).min(self.pixels.len())];
            for t in 0..count {
                let frame = &mut frames[t * self.detector..(t + 1) * self.detector];
                for (j, &p) in pix.iter().enumerate() {
                    frame[p] = col[t * pix.len() + j];
                }
            }
        }
        frames
    }
}

/// A short series held in memory, for tests.
pub struct SpeckleData {
    /// Frame-major counts: frame t, pixel p at `frames[t * size² + p]`.
    pub frames: Vec<u16>,
    pub scene: Scene,
}

pub fn generate(cfg: &SpeckleConfig) -> SpeckleData {
    let scene = Scene::new(cfg);
    let frames = Speckle::new(&scene, cfg).next_frames(cfg.frames);
    SpeckleData { frames, scene }
}

/// The files of a written dataset.
#[derive(Clone, Debug)]
pub struct DatasetFiles {
    /// The directory holding everything below (what a flow transfers).
    pub dir: PathBuf,
    pub raw: PathBuf,
    pub metadata: PathBuf,
    pub qmap: PathBuf,
    pub truth: PathBuf,
}

/// Frames generated and written per step of [`write_dataset`].
const WRITE_CHUNK: usize = 64;

/// Writes a measurement as a beamline would leave it, in `dir/name/`:
/// `name.h5` (raw uint16 frames at /entry/data/data), `name_metadata.hdf`,
/// `name_qmap.hdf` and `ground_truth.json`. `progress` is called with the
/// number of frames written so far.
pub fn write_dataset(
    cfg: &SpeckleConfig,
    dir: &Path,
    name: &str,
    mut progress: impl FnMut(usize),
) -> Result<DatasetFiles, String> {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
    let files = DatasetFiles {
        raw: out.join(format!("{name}.h5")),
        metadata: out.join(format!("{name}_metadata.hdf")),
        qmap: out.join(format!("{name}_qmap.hdf")),
        truth: out.join("ground_truth.json"),
        dir: out,
    };
    let scene = Scene::new(cfg);
    write_qmap(&files.qmap, &scene.qmap_file)?;
    write_metadata(
        &files.metadata,
        &Metadata {
            frame_time: cfg.dt,
            count_time: cfg.dt,
            geometry: scene.qmap_file.geometry.clone(),
            detector: "synthetic speckle".into(),
        },
    )?;
    let mut speckle = Speckle::new(&scene, cfg);
    let mut raw = RawWriter::create(&files.raw, cfg.frames, cfg.size, cfg.size)?;
    let mut done = 0;
    while done < cfg.frames {
        let n = WRITE_CHUNK.min(cfg.frames - done);
        raw.append(&speckle.next_frames(n))?;
        done += n;
        progress(done);
    }
    raw.finish()?;
    let truth = serde_json::to_string_pretty(&scene.truth_json(cfg)).expect("json");
    std::fs::write(&files.truth, truth)
        .map_err(|e| format!("{}: cannot write: {e}", files.truth.display()))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xpcs::{fit::fit_g2, qbin::normalize, Multitau};

    /// Chunked generation continues the same series.
    #[test]
    fn chunks_continue_one_series() {
        let cfg = SpeckleConfig {
            size: 32,
            frames: 10,
            ..Default::default()
        };
        let scene = Scene::new(&cfg);
        let whole = Speckle::new(&scene, &cfg).next_frames(10);
        let mut s = Speckle::new(&scene, &cfg);
        let mut parts = s.next_frames(3);
        parts.extend(s.next_frames(7));
        assert_eq!(whole, parts);
        assert!(whole.iter().any(|&v| v > 0));
        // Compressed numbering: bins 1..=n with none missing.
        let q = scene.qmap();
        let n_sq = q.n_sq();
        let used: std::collections::BTreeSet<u32> =
            q.sqmap.iter().copied().filter(|&s| s > 0).collect();
        assert_eq!(used.len(), n_sq);
        assert_eq!(scene.qmap_file.static_mapping.len(), n_sq);
    }

    /// Generate → correlate → normalise → fit, and compare with the truth.
    #[test]
    fn multitau_recovers_diffusion_and_contrast() {
        let cfg = SpeckleConfig {
            size: 128,
            frames: 2000,
            ..Default::default()
        };
        let data = generate(&cfg);
        let scene = &data.scene;
        let qmap = scene.qmap();
        let pixels = qmap.valid_pixels();
        assert!(pixels.len() > 12_000, "{}", pixels.len());
        let npx = qmap.mask.len();
        let mut mt = Multitau::masked(cfg.frames as u64, npx, pixels.clone());
        for chunk in data.frames.chunks(256 * npx) {
            mt.push(chunk).unwrap();
        }
        let sums = mt.finish().unwrap();
        let res = normalize(&sums, qmap, &pixels);
        let tau_s: Vec<f64> = res.tau.iter().map(|&t| t as f64 * scene.dt).collect();
        let (mut num, mut den) = (0.0, 0.0);
        let mut betas = Vec::new();
        for d in 1..=qmap.n_dq() {
            let truth = scene.gamma_of_dq(d);
            // Resolvable: 1 ≤ 1/(2Γ dt) ≤ N/20 frames, as in the reference's check.
            let decay_frames = 1.0 / (2.0 * truth * scene.dt);
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
            let q2 = truth / scene.diffusion;
            num += f.gamma * q2;
            den += q2 * q2;
            betas.push(f.beta);
        }
        assert!(betas.len() >= 8, "only {} resolvable bins", betas.len());
        let d_fit = num / den;
        let d_err = (d_fit - scene.diffusion).abs() / scene.diffusion;
        let beta = betas.iter().sum::<f64>() / betas.len() as f64;
        eprintln!(
            "{} resolvable bins: D off by {:.2} %, mean beta {beta:.4} (true 0.5)",
            betas.len(),
            100.0 * d_err
        );
        assert!(
            d_err < 0.03,
            "D fitted {d_fit:.4e}, true {:.4e} ({:.2} %)",
            scene.diffusion,
            100.0 * d_err
        );
        assert!((beta - 0.5).abs() < 0.03, "beta {beta:.4}");
    }
}
