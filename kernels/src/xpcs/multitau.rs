//! Streaming multi-tau correlation per pixel.
//!
//! Frames arrive in chunks; pixels are split into tiles processed in parallel,
//! each tile keeping its own per-level state (8 history frames, the level's
//! running total, the first 8 frames' partial sums and the G2 accumulators),
//! so memory is bounded by the tiles' state, not by the number of frames, and
//! a tile's state stays in cache while a chunk streams through it.
//!
//! What is computed is the reference's closed form (reference/xpcs.md §1.3):
//! for delay (L, k), with I_L(t) the sum of 2^L consecutive frames,
//! N_L = N / 2^L and eff = N_L − k,
//!   G2 = Σ_{t≥k} I_L(t−k)·I_L(t) / (eff·4^L)
//!   IP = Σ_{t≥k} I_L(t) / (eff·2^L)            (the later frame of each pair)
//!   IF = Σ_{t<N_L−k} I_L(t) / (eff·2^L)        (the earlier frame)
//! Frames and history are f32 (exact for the counts of a level up to 2^24);
//! every sum is accumulated in f64.

use ndarray::Array2;
use rayon::prelude::*;

use super::delays::{delay_grid, levels, Delay};

/// Pixels per tile: state of about 100 kB per level set, small enough for L2.
const TILE: usize = 1024;
const HISTORY: usize = 8;

struct Level {
    /// Ring of the last 8 frames at this level: slot t % 8 holds frame t.
    hist: Vec<f32>,
    /// The odd frame waiting for its pair before promotion to the next level.
    pending: Vec<f32>,
    has_pending: bool,
    count: u64,
    sum: Vec<f64>,
    /// first[(k−1)·w + p] = Σ_{t<k} I_L(t, p) for k = 1..=8.
    first: Vec<f64>,
    /// (index into the grid, k) of the delays measured at this level.
    delays: Vec<(usize, u32)>,
    /// g2[j·w + p] for the j-th delay of this level.
    g2: Vec<f64>,
}

struct Tile {
    width: usize,
    levels: Vec<Level>,
}

impl Tile {
    fn new(width: usize, grid: &[Delay], nlevels: usize) -> Self {
        let levels = (0..nlevels)
            .map(|l| {
                let delays: Vec<(usize, u32)> = grid
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.level as usize == l)
                    .map(|(i, d)| (i, d.k))
                    .collect();
                Level {
                    hist: vec![0.0; HISTORY * width],
                    pending: vec![0.0; width],
                    has_pending: false,
                    count: 0,
                    sum: vec![0.0; width],
                    first: vec![0.0; HISTORY * width],
                    g2: vec![0.0; delays.len() * width],
                    delays,
                }
            })
            .collect();
        Tile { width, levels }
    }

    /// Adds one frame at `level` and promotes pairs upward.
    fn push(&mut self, level: usize, frame: &[f32]) {
        let w = self.width;
        let nlevels = self.levels.len();
        let lv = &mut self.levels[level];
        let t = lv.count as usize;
        for (j, &(_, k)) in lv.delays.iter().enumerate() {
            let k = k as usize;
            if t < k {
                continue;
            }
            let slot = (t - k) % HISTORY;
            let past = &lv.hist[slot * w..(slot + 1) * w];
            let acc = &mut lv.g2[j * w..(j + 1) * w];
            for ((a, &x), &y) in acc.iter_mut().zip(frame).zip(past) {
                *a += f64::from(x * y);
            }
        }
        for (s, &x) in lv.sum.iter_mut().zip(frame) {
            *s += f64::from(x);
        }
        if t < HISTORY {
            // first[t] = first[t−1] + frame: partial sums of the first frames.
            let (before, rest) = lv.first.split_at_mut(t * w);
            let row = &mut rest[..w];
            for (p, r) in row.iter_mut().enumerate() {
                let prev = if t == 0 { 0.0 } else { before[(t - 1) * w + p] };
                *r = prev + f64::from(frame[p]);
            }
        }
        let slot = t % HISTORY;
        lv.hist[slot * w..(slot + 1) * w].copy_from_slice(frame);
        lv.count += 1;
        if level + 1 >= nlevels {
            return;
        }
        if lv.has_pending {
            lv.has_pending = false;
            // Sum the pair in place: no allocation per promoted frame.
            for (a, &b) in lv.pending.iter_mut().zip(frame) {
                *a += b;
            }
            let pair = std::mem::take(&mut lv.pending);
            self.push(level + 1, &pair);
            self.levels[level].pending = pair;
        } else {
            lv.pending.copy_from_slice(frame);
            lv.has_pending = true;
        }
    }
}

/// Per-pixel G2, IP and IF for every delay: what the q-binning normalises.
pub struct PixelSums {
    pub delays: Vec<Delay>,
    /// Shape (delays, pixels).
    pub g2: Array2<f64>,
    pub ip: Array2<f64>,
    pub if_: Array2<f64>,
    pub frames: u64,
    /// Mean of each pixel over all frames (what the average SAXS image shows).
    pub mean: Vec<f64>,
    /// Mean over the pixels of each frame, in frame order.
    pub intensity_vs_time: Vec<f64>,
}

/// A multi-tau correlator over `pixels` values per frame, for `frames` frames.
pub struct Multitau {
    grid: Vec<Delay>,
    frames: u64,
    pixels: usize,
    tiles: Vec<Tile>,
    seen: u64,
    intensity: Vec<f64>,
}

impl Multitau {
    pub fn new(frames: u64, pixels: usize) -> Self {
        let grid = delay_grid(frames);
        let nlevels = levels(&grid);
        let tiles = (0..pixels.div_ceil(TILE))
            .map(|i| Tile::new(TILE.min(pixels - i * TILE), &grid, nlevels))
            .collect();
        Multitau {
            grid,
            frames,
            pixels,
            tiles,
            seen: 0,
            intensity: Vec::with_capacity(frames as usize),
        }
    }

    pub fn delays(&self) -> &[Delay] {
        &self.grid
    }

    /// Correlates `chunk`: whole frames of `pixels` values each, in time order.
    pub fn push(&mut self, chunk: &[f32]) -> Result<(), String> {
        if !chunk.len().is_multiple_of(self.pixels) {
            return Err(format!(
                "chunk of {} values is not a whole number of {}-pixel frames",
                chunk.len(),
                self.pixels
            ));
        }
        let n = (chunk.len() / self.pixels) as u64;
        if self.seen + n > self.frames {
            return Err(format!(
                "{} frames pushed, but the correlator was made for {}",
                self.seen + n,
                self.frames
            ));
        }
        let pixels = self.pixels;
        self.intensity.extend(
            chunk
                .chunks_exact(pixels)
                .map(|f| f.iter().map(|&x| f64::from(x)).sum::<f64>() / pixels as f64),
        );
        self.tiles.par_iter_mut().enumerate().for_each(|(i, tile)| {
            let start = i * TILE;
            for f in chunk.chunks_exact(pixels) {
                tile.push(0, &f[start..start + tile.width]);
            }
        });
        self.seen += n;
        Ok(())
    }

    /// The closed-form G2, IP, IF once every frame has been pushed.
    pub fn finish(self) -> Result<PixelSums, String> {
        if self.seen != self.frames {
            return Err(format!(
                "{} of {} frames were pushed",
                self.seen, self.frames
            ));
        }
        let t = self.grid.len();
        let mut g2 = Array2::<f64>::zeros((t, self.pixels));
        let mut ip = Array2::<f64>::zeros((t, self.pixels));
        let mut if_ = Array2::<f64>::zeros((t, self.pixels));
        let mut mean = vec![0f64; self.pixels];
        for (i, tile) in self.tiles.iter().enumerate() {
            let w = tile.width;
            let start = i * TILE;
            for (m, &s) in mean[start..start + w].iter_mut().zip(&tile.levels[0].sum) {
                *m = s / self.frames as f64;
            }
            for lv in &tile.levels {
                let n_l = lv.count as usize;
                for (j, &(tid, k)) in lv.delays.iter().enumerate() {
                    let k = k as usize;
                    let level = self.grid[tid].level as i32;
                    if n_l <= k {
                        continue;
                    }
                    let eff = (n_l - k) as f64;
                    let g2_norm = eff * 4f64.powi(level);
                    let i_norm = eff * 2f64.powi(level);
                    for p in 0..w {
                        let first_k = lv.first[(k - 1) * w + p];
                        // The last k frames are the newest k slots of the ring.
                        let last_k: f64 = (n_l - k..n_l)
                            .map(|tt| f64::from(lv.hist[(tt % HISTORY) * w + p]))
                            .sum();
                        g2[[tid, start + p]] = lv.g2[j * w + p] / g2_norm;
                        ip[[tid, start + p]] = (lv.sum[p] - first_k) / i_norm;
                        if_[[tid, start + p]] = (lv.sum[p] - last_k) / i_norm;
                    }
                }
            }
        }
        Ok(PixelSums {
            delays: self.grid,
            g2,
            ip,
            if_,
            frames: self.frames,
            mean,
            intensity_vs_time: self.intensity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The closed form evaluated directly, in f64: the oracle. Its loops
    /// spell out the formula's indices on purpose.
    #[allow(clippy::needless_range_loop)]
    fn oracle(frames: &[f32], n: usize, p: usize) -> (Vec<Delay>, Vec<[f64; 3]>) {
        let grid = delay_grid(n as u64);
        let mut out = Vec::new();
        for d in &grid {
            let s = 1usize << d.level;
            let n_l = n / s;
            let lvl: Vec<Vec<f64>> = (0..n_l)
                .map(|t| {
                    (0..p)
                        .map(|q| (0..s).map(|j| f64::from(frames[(t * s + j) * p + q])).sum())
                        .collect()
                })
                .collect();
            let k = d.k as usize;
            let eff = (n_l - k) as f64;
            for q in 0..p {
                let g2: f64 = (k..n_l).map(|t| lvl[t - k][q] * lvl[t][q]).sum::<f64>()
                    / (eff * (s * s) as f64);
                let ip: f64 = (k..n_l).map(|t| lvl[t][q]).sum::<f64>() / (eff * s as f64);
                let if_: f64 = (0..n_l - k).map(|t| lvl[t][q]).sum::<f64>() / (eff * s as f64);
                out.push([g2, ip, if_]);
            }
        }
        (grid, out)
    }

    #[test]
    fn streaming_equals_the_closed_form() {
        // Odd frame counts and a pixel count that leaves a partial tile.
        for (n, p, chunk) in [(203usize, 1500usize, 7usize), (64, 3, 64), (1000, 17, 256)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
            let frames: Vec<f32> = (0..n * p).map(|_| rng.random_range(0..12) as f32).collect();
            let mut mt = Multitau::new(n as u64, p);
            for c in frames.chunks(chunk * p) {
                mt.push(c).unwrap();
            }
            let sums = mt.finish().unwrap();
            let (grid, want) = oracle(&frames, n, p);
            assert_eq!(sums.delays, grid);
            for (tid, _) in grid.iter().enumerate() {
                for q in 0..p {
                    let w = want[tid * p + q];
                    let got = [sums.g2[[tid, q]], sums.ip[[tid, q]], sums.if_[[tid, q]]];
                    for c in 0..3 {
                        let tol = 1e-9 * w[c].abs().max(1.0);
                        assert!(
                            (got[c] - w[c]).abs() <= tol,
                            "n={n} tau={} pixel {q} quantity {c}: {} vs {}",
                            grid[tid].tau,
                            got[c],
                            w[c]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_frame_counts_are_errors() {
        let mut mt = Multitau::new(10, 4);
        assert!(mt
            .push(&[0.0; 6])
            .unwrap_err()
            .contains("not a whole number"));
        mt.push(&[0.0; 36]).unwrap();
        assert_eq!(mt.finish().err().unwrap(), "9 of 10 frames were pushed");
    }
}
