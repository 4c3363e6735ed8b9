//! Streaming multi-tau correlation per pixel.
//!
//! What is computed is the reference's closed form (reference/xpcs.md §1.3):
//! for delay (L, k), with I_L(t) the sum of 2^L consecutive frames,
//! N_L = N / 2^L and eff = N_L − k,
//!   G2 = Σ_{t≥k} I_L(t−k)·I_L(t) / (eff·4^L)
//!   IP = Σ_{t≥k} I_L(t) / (eff·2^L)            (the later frame of each pair)
//!   IF = Σ_{t<N_L−k} I_L(t) / (eff·2^L)        (the earlier frame)
//!
//! How, and why this way:
//! - Pixels are split into tiles processed in parallel. A tile keeps, per
//!   level, the last 8 frames, the running total, the partial sums of the
//!   first 8 frames and the G2 accumulators, so memory is bounded by this
//!   state (a few hundred bytes per pixel and level), not by the frame count.
//! - Frames arrive in chunks. For each tile and level, the 8 history rows and
//!   the chunk's rows are laid out contiguously in a per-thread scratch
//!   buffer, so delay k of row r is simply row r − k: the inner loop is a
//!   few vector loads and FMAs per row for a group of pixels, with the
//!   accumulators held in registers for the whole chunk. Pair sums for the
//!   next level are written by the same loop.
//! - Accumulators are f32 within a chunk (products of photon counts are
//!   integers, exact in f32 below 2^24) and are added to f64 totals after
//!   every chunk, so rounding does not grow with the number of frames.
//! - The inner loop is compiled three times (AVX-512, AVX2+FMA and the
//!   portable baseline) and chosen at run time from the CPU's features.

use ndarray::{Array2, Axis};
use rayon::prelude::*;

use super::delays::{delay_grid, levels, Delay};
use super::lanes::{self, Pass, Rows};

/// Pixels per tile: the scratch below (2 × CHUNK rows) stays in L2.
const TILE: usize = 128;
/// Frames correlated per pass over a tile.
const CHUNK: usize = 256;
const HISTORY: usize = 8;

struct Level {
    /// The last 8 frames at this level, oldest first (zeros before the start,
    /// which makes the products of the first k frames vanish).
    hist: Vec<f32>,
    count: u64,
    sum: Vec<f64>,
    /// first[(k−1)·w + p] = Σ_{t<k} I_L(t, p) for k = 1..=8.
    first: Vec<f64>,
    /// Smallest k measured at this level (1 at level 0, 5 above).
    kmin: usize,
    /// (index into the grid, k) of the delays measured at this level.
    delays: Vec<(usize, u32)>,
    /// g2[(k − kmin)·w + p]: Σ I(t−k)·I(t) so far, for every k in kmin..=8.
    g2: Vec<f64>,
}

struct Tile {
    start: usize,
    width: usize,
    levels: Vec<Level>,
}

/// Per-thread scratch: the tile's frames gathered from the detector frames,
/// the pair sums of one level (the next level's input) in two buffers used
/// in turn, and 16 rows for the first 8 frames of a pass next to the 8
/// history frames they reach back to.
struct Scratch {
    frames: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    prologue: Vec<f32>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            frames: vec![0.0; CHUNK * TILE],
            a: vec![0.0; (CHUNK / 2 + 1) * TILE],
            b: vec![0.0; (CHUNK / 2 + 1) * TILE],
            prologue: vec![0.0; 2 * HISTORY * TILE],
        }
    }
}

impl Tile {
    fn new(start: usize, width: usize, grid: &[Delay], nlevels: usize) -> Self {
        let levels = (0..nlevels)
            .map(|l| {
                let delays: Vec<(usize, u32)> = grid
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.level as usize == l)
                    .map(|(i, d)| (i, d.k))
                    .collect();
                let kmin = if l == 0 { 1 } else { 5 };
                Level {
                    hist: vec![0.0; HISTORY * width],
                    count: 0,
                    sum: vec![0.0; width],
                    first: vec![0.0; HISTORY * width],
                    kmin,
                    g2: vec![0.0; (HISTORY + 1 - kmin) * width],
                    delays,
                }
            })
            .collect();
        Tile {
            start,
            width,
            levels,
        }
    }

    /// Correlates `n` ≤ CHUNK frames of this tile: its pixels `index` are
    /// gathered from `chunk` (detector frames of `frame_len` values) and
    /// converted to f32 while still in cache. Returns each frame's sum over
    /// the tile.
    fn push<T: Count>(
        &mut self,
        chunk: &[T],
        frame_len: usize,
        index: &[usize],
        n: usize,
        s: &mut Scratch,
    ) -> Vec<f64> {
        let w = self.width;
        // Pixels of a tile are mostly one run of the detector (masks are
        // regions), which allows a straight conversion instead of a gather.
        let run = index[w - 1] - index[0] == w - 1;
        let frame_sums: Vec<f64> = (0..n)
            .map(|t| {
                let src = &chunk[t * frame_len..(t + 1) * frame_len];
                let dst = &mut s.frames[t * w..(t + 1) * w];
                if run {
                    for (d, &x) in dst.iter_mut().zip(&src[index[0]..index[0] + w]) {
                        *d = x.to_f32();
                    }
                } else {
                    for (d, &i) in dst.iter_mut().zip(index) {
                        *d = src[i].to_f32();
                    }
                }
                row_sum(dst)
            })
            .collect();
        let nlevels = self.levels.len();
        let (mut src, mut dst) = (&mut s.a, &mut s.b);
        let input = Rows {
            buf: &s.frames,
            stride: w,
        };
        let mut rows = self.levels[0].correlate(
            w,
            input,
            0,
            n,
            &mut s.prologue,
            (nlevels > 1).then_some(&mut src[..]),
        );
        for l in 1..nlevels {
            if rows == 0 {
                break;
            }
            let input = Rows {
                buf: &src[..],
                stride: w,
            };
            rows = self.levels[l].correlate(
                w,
                input,
                0,
                rows,
                &mut s.prologue,
                (l + 1 < nlevels).then_some(&mut dst[..]),
            );
            std::mem::swap(&mut src, &mut dst);
        }
        frame_sums
    }
}

/// A detector count type the correlator reads directly.
pub trait Count: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl Count for u8 {
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}
impl Count for u16 {
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}
impl Count for u32 {
    /// Exact below 2^24 counts per pixel and frame.
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Count for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

/// Frames in a pushed chunk of `values` values: whole `frame_len`-value
/// frames, no more in all than the correlator was made for. Shared by both
/// backends so they refuse the same inputs with the same words.
pub(crate) fn frames_in_chunk(
    values: usize,
    frame_len: usize,
    seen: u64,
    frames: u64,
) -> Result<u64, String> {
    if frame_len == 0 || !values.is_multiple_of(frame_len) {
        return Err(format!(
            "chunk of {values} values is not a whole number of {frame_len}-value frames"
        ));
    }
    let n = (values / frame_len) as u64;
    if seen + n > frames {
        return Err(format!(
            "{} frames pushed, but the correlator was made for {frames}",
            seen + n
        ));
    }
    Ok(n)
}

/// The closed form needs every frame the correlator was made for.
pub(crate) fn all_frames_pushed(seen: u64, frames: u64) -> Result<(), String> {
    if seen != frames {
        return Err(format!("{seen} of {frames} frames were pushed"));
    }
    Ok(())
}

/// Sum of a tile row in eight f32 lanes (exact for photon counts), which the
/// compiler vectorises, unlike a sequential sum.
fn row_sum(row: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let mut it = row.chunks_exact(8);
    for c in &mut it {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let tail: f64 = it.remainder().iter().map(|&x| f64::from(x)).sum();
    lanes.iter().map(|&x| f64::from(x)).sum::<f64>() + tail
}

impl Level {
    /// Correlates `n` new frames at this level: rows 0..n of `input`,
    /// columns col..col + w. Their pair sums go to `next` (stride w) when
    /// there is a next level; returns how many pairs were written.
    fn correlate(
        &mut self,
        w: usize,
        input: Rows,
        col: usize,
        n: usize,
        prologue: &mut [f32],
        mut next: Option<&mut [f32]>,
    ) -> usize {
        let row = |t: usize| &input.buf[t * input.stride + col..t * input.stride + col + w];
        let count = self.count as usize;
        // Partial sums of the first 8 frames of this level, for IP.
        for t in count..(count + n).min(HISTORY) {
            let x = row(t - count);
            let (before, rest) = self.first.split_at_mut(t * w);
            for (p, f) in rest[..w].iter_mut().enumerate() {
                let prev = if t == 0 { 0.0 } else { before[(t - 1) * w + p] };
                *f = prev + f64::from(x[p]);
            }
        }
        // The first (up to) 8 frames reach back into the history: lay both
        // out contiguously. Later frames are read where they are.
        let m = n.min(HISTORY);
        prologue[..HISTORY * w].copy_from_slice(&self.hist);
        for t in 0..m {
            prologue[(HISTORY + t) * w..(HISTORY + t + 1) * w].copy_from_slice(row(t));
        }
        let next_base = self.count / 2;
        let mut pass = Pass {
            src: Rows {
                buf: prologue,
                stride: w,
            },
            rows: HISTORY..HISTORY + m,
            col: 0,
            w,
            kmin: self.kmin,
            index0: self.count,
            next: next.as_deref_mut(),
            next_base,
        };
        lanes::run(&mut pass, &mut self.g2, &mut self.sum);
        if n > HISTORY {
            let mut pass = Pass {
                src: input,
                rows: HISTORY..n,
                col,
                w,
                kmin: self.kmin,
                index0: self.count + HISTORY as u64,
                next: next.as_deref_mut(),
                next_base,
            };
            lanes::run(&mut pass, &mut self.g2, &mut self.sum);
        }
        if n >= HISTORY {
            for t in 0..HISTORY {
                self.hist[t * w..(t + 1) * w].copy_from_slice(row(n - HISTORY + t));
            }
        } else {
            self.hist
                .copy_from_slice(&prologue[n * w..(n + HISTORY) * w]);
        }
        self.count += n as u64;
        if next.is_some() {
            (self.count / 2 - next_base) as usize
        } else {
            0
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

impl PixelSums {
    /// One result from the sums of consecutive, disjoint pixel shares of the
    /// same frames (MPI ranks, in rank order). Every per-pixel value is the
    /// share's own, unchanged; the intensity of each frame is the mean over
    /// all pixels, weighted by the shares' sizes.
    pub fn merge(parts: Vec<PixelSums>) -> Result<PixelSums, String> {
        let Some(first) = parts.first() else {
            return Err("no pixel shares to merge".into());
        };
        let (delays, frames) = (first.delays.clone(), first.frames);
        for (i, p) in parts.iter().enumerate() {
            if p.frames != frames || p.delays.len() != delays.len() {
                return Err(format!(
                    "pixel share {i}: {} frames and {} delays, share 0 has {frames} and {}",
                    p.frames,
                    p.delays.len(),
                    delays.len()
                ));
            }
        }
        let total: usize = parts.iter().map(|p| p.mean.len()).sum();
        let cat = |f: fn(&PixelSums) -> &Array2<f64>| {
            let views: Vec<_> = parts.iter().map(|p| f(p).view()).collect();
            ndarray::concatenate(Axis(1), &views).map_err(|e| format!("merging pixel shares: {e}"))
        };
        let mut intensity = vec![0f64; first.intensity_vs_time.len()];
        for p in &parts {
            let w = p.mean.len() as f64 / total.max(1) as f64;
            for (acc, v) in intensity.iter_mut().zip(&p.intensity_vs_time) {
                *acc += w * v;
            }
        }
        Ok(PixelSums {
            g2: cat(|p| &p.g2)?,
            ip: cat(|p| &p.ip)?,
            if_: cat(|p| &p.if_)?,
            mean: parts.iter().flat_map(|p| p.mean.iter().copied()).collect(),
            intensity_vs_time: intensity,
            delays,
            frames,
        })
    }
}

/// A multi-tau correlator for `frames` frames, over chosen pixels of each.
pub struct Multitau {
    grid: Vec<Delay>,
    frames: u64,
    /// Values per pushed frame.
    frame_len: usize,
    /// Which values of a frame are correlated, in increasing order.
    index: Vec<usize>,
    tiles: Vec<Tile>,
    seen: u64,
    intensity: Vec<f64>,
}

impl Multitau {
    /// Correlates every value of `pixels`-value frames.
    pub fn new(frames: u64, pixels: usize) -> Self {
        Self::masked(frames, pixels, (0..pixels).collect())
    }

    /// Correlates the values at `index` (increasing) of `frame_len`-value
    /// frames: the detector's valid pixels, read from whole frames.
    pub fn masked(frames: u64, frame_len: usize, index: Vec<usize>) -> Self {
        assert!(
            index.windows(2).all(|w| w[0] < w[1]) && index.last().is_none_or(|&i| i < frame_len),
            "pixel index must increase and lie inside the frame"
        );
        let grid = delay_grid(frames);
        let nlevels = levels(&grid);
        let pixels = index.len();
        // The state is ~1.4 KB per pixel; building it on every core spreads
        // the page faults of first touch.
        let tiles = (0..pixels.div_ceil(TILE))
            .into_par_iter()
            .map(|i| {
                let start = i * TILE;
                Tile::new(start, TILE.min(pixels - start), &grid, nlevels)
            })
            .collect();
        Multitau {
            grid,
            frames,
            frame_len,
            index,
            tiles,
            seen: 0,
            intensity: Vec::with_capacity(frames as usize),
        }
    }

    pub fn delays(&self) -> &[Delay] {
        &self.grid
    }

    /// Number of correlated pixels.
    pub fn pixels(&self) -> usize {
        self.index.len()
    }

    /// Frames pushed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Correlates `chunk`: whole frames, in time order.
    pub fn push<T: Count>(&mut self, chunk: &[T]) -> Result<(), String> {
        let len = self.frame_len;
        let n = frames_in_chunk(chunk.len(), len, self.seen, self.frames)?;
        let pixels = self.index.len();
        let index = &self.index;
        for part in chunk.chunks(CHUNK * len) {
            let rows = part.len() / len;
            let per_tile: Vec<Vec<f64>> = self
                .tiles
                .par_iter_mut()
                .map_init(Scratch::new, |s, tile| {
                    let idx = &index[tile.start..tile.start + tile.width];
                    tile.push(part, len, idx, rows, s)
                })
                .collect();
            for t in 0..rows {
                let total: f64 = per_tile.iter().map(|v| v[t]).sum();
                self.intensity.push(total / pixels.max(1) as f64);
            }
        }
        self.seen += n;
        Ok(())
    }

    /// The closed-form G2, IP, IF once every frame has been pushed.
    pub fn finish(self) -> Result<PixelSums, String> {
        all_frames_pushed(self.seen, self.frames)?;
        let t = self.grid.len();
        let pixels = self.index.len();
        let mut g2 = Array2::<f64>::zeros((t, pixels));
        let mut ip = Array2::<f64>::zeros((t, pixels));
        let mut if_ = Array2::<f64>::zeros((t, pixels));
        let mut mean = vec![0f64; pixels];
        let grid = &self.grid;
        let frames = self.frames as f64;
        let blocks = g2
            .axis_chunks_iter_mut(Axis(1), TILE)
            .zip(ip.axis_chunks_iter_mut(Axis(1), TILE))
            .zip(if_.axis_chunks_iter_mut(Axis(1), TILE))
            .zip(mean.chunks_mut(TILE))
            .zip(&self.tiles)
            .collect::<Vec<_>>();
        blocks
            .into_par_iter()
            .for_each(|((((mut g2, mut ip), mut if_), mean), tile)| {
                let w = tile.width;
                for (m, &s) in mean.iter_mut().zip(&tile.levels[0].sum) {
                    *m = s / frames;
                }
                for lv in &tile.levels {
                    let n_l = lv.count as usize;
                    for &(tid, k) in &lv.delays {
                        let k = k as usize;
                        if n_l <= k {
                            continue;
                        }
                        let level = grid[tid].level as i32;
                        let eff = (n_l - k) as f64;
                        let g2_norm = eff * 4f64.powi(level);
                        let i_norm = eff * 2f64.powi(level);
                        let acc = &lv.g2[(k - lv.kmin) * w..(k - lv.kmin + 1) * w];
                        let first = &lv.first[(k - 1) * w..k * w];
                        for p in 0..w {
                            // The last k frames are the newest k history rows.
                            let last_k: f64 = (HISTORY - k..HISTORY)
                                .map(|r| f64::from(lv.hist[r * w + p]))
                                .sum();
                            g2[[tid, p]] = acc[p] / g2_norm;
                            ip[[tid, p]] = (lv.sum[p] - first[p]) / i_norm;
                            if_[[tid, p]] = (lv.sum[p] - last_k) / i_norm;
                        }
                    }
                }
            });
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

    #[test]
    fn shares_of_the_pixels_merge_into_the_whole() {
        // 40 frames of 9×7 random counts; pixels 3.. valid; shares of 20 and the rest.
        let (frames, px) = (40usize, 63usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let data: Vec<u16> = (0..frames * px).map(|_| rng.random_range(0..50)).collect();
        let valid: Vec<usize> = (3..px).collect();
        let run = |pixels: &[usize]| {
            let mut mt = Multitau::masked(frames as u64, px, pixels.to_vec());
            mt.push(&data).unwrap();
            mt.finish().unwrap()
        };
        let whole = run(&valid);
        let merged = PixelSums::merge(vec![run(&valid[..20]), run(&valid[20..])]).unwrap();
        // Each pixel is correlated on its own: the same numbers exactly.
        assert_eq!(merged.g2, whole.g2);
        assert_eq!(merged.ip, whole.ip);
        assert_eq!(merged.if_, whole.if_);
        assert_eq!(merged.mean, whole.mean);
        for (a, b) in merged
            .intensity_vs_time
            .iter()
            .zip(&whole.intensity_vs_time)
        {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(PixelSums::merge(vec![]).is_err());
    }

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
        // Odd frame counts and chunk sizes, chunks longer than the internal
        // pass, and pixel counts that leave partial tiles and lane groups.
        for (n, p, chunk) in [
            (203usize, 1500usize, 7usize),
            (64, 3, 64),
            (1000, 17, 256),
            (777, 300, 333),
            (300, 40, 1),
        ] {
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
            for t in [0, n / 2, n - 1] {
                let want: f64 = frames[t * p..(t + 1) * p]
                    .iter()
                    .map(|&x| f64::from(x))
                    .sum::<f64>()
                    / p as f64;
                assert!((sums.intensity_vs_time[t] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn masked_u16_frames_equal_the_gathered_f32_values() {
        let (n, len) = (150usize, 700usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let frames: Vec<u16> = (0..n * len).map(|_| rng.random_range(0..9)).collect();
        // A run that fills whole tiles, then scattered pixels.
        let index: Vec<usize> = (0..300).chain((301..len).step_by(3)).collect();
        let mut masked = Multitau::masked(n as u64, len, index.clone());
        for c in frames.chunks(37 * len) {
            masked.push(c).unwrap();
        }
        let gathered: Vec<f32> = frames
            .chunks(len)
            .flat_map(|f| index.iter().map(|&i| f32::from(f[i])))
            .collect();
        let mut plain = Multitau::new(n as u64, index.len());
        plain.push(&gathered).unwrap();
        let (a, b) = (masked.finish().unwrap(), plain.finish().unwrap());
        assert_eq!(a.g2, b.g2);
        assert_eq!(a.ip, b.ip);
        assert_eq!(a.if_, b.if_);
        assert_eq!(a.mean, b.mean);
        assert_eq!(a.intensity_vs_time, b.intensity_vs_time);
    }

    #[test]
    fn wrong_frame_counts_are_errors() {
        let mut mt = Multitau::new(10, 4);
        assert!(mt
            .push(&[0f32; 6])
            .unwrap_err()
            .contains("not a whole number"));
        mt.push(&[0u16; 36]).unwrap();
        assert_eq!(mt.finish().err().unwrap(), "9 of 10 frames were pushed");
    }
}
