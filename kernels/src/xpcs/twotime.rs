//! Two-time correlation C(t1, t2) per dynamic q bin (reference/xpcs.md §2).
//!
//! Pixels are grouped by dynamic bin, and within it by static bin. Every
//! frame is smoothed by its static-bin means, J(t,p) = I(t,p) / ⟨I(t,·)⟩_sq(p)
//! (a mean ≤ 0 counts as 1), and for each dynamic bin with P_d pixels
//! C = J Jᵀ · P_d / (S(t1)·S(t2)) with S(t) = Σ_p J(t,p) (≤ 0 counts as 1).
//! C is symmetric, so only its upper triangle is computed, with one BLAS
//! SSYRK per bin (half the work of a general matrix product) — the upper
//! triangle is also exactly what the results file stores.
//! From C come g2 by lag (the mean of each diagonal, lag 0 included) and the
//! same inside 5 non-overlapping diagonal blocks of N/5 frames.
//!
//! Memory: the smoothed frames of the pixels being correlated (N × P × 4
//! bytes) plus one N × N map. [`TwotimePlan::batches`] splits the dynamic
//! bins into groups whose frames fit a budget; each group is a pass over
//! the raw frames.

use std::collections::BTreeMap;

use ndarray::Array2;
use rayon::prelude::*;

use super::QMap;

/// The pixels of one dynamic bin, grouped by static bin.
#[derive(Clone, Debug)]
pub struct DynamicBin {
    pub dq: u32,
    /// (static bin, detector pixel indices), static bins in increasing order.
    pub statics: Vec<(u32, Vec<usize>)>,
}

impl DynamicBin {
    pub fn pixels(&self) -> usize {
        self.statics.iter().map(|(_, p)| p.len()).sum()
    }
}

/// Which pixels the two-time correlation uses, in which order.
#[derive(Clone, Debug)]
pub struct TwotimePlan {
    pub bins: Vec<DynamicBin>,
}

impl TwotimePlan {
    /// Plans the dynamic bins `selection` (all non-empty bins when `None`).
    /// Every static bin must lie inside a single dynamic bin.
    pub fn new(qmap: &QMap, selection: Option<&[u32]>) -> Result<Self, String> {
        let mut by_dq: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
        let mut owner: BTreeMap<u32, u32> = BTreeMap::new();
        for p in 0..qmap.mask.len() {
            let (s, d) = (qmap.sqmap[p], qmap.dqmap[p]);
            if qmap.mask[p] == 0 || s == 0 || d == 0 {
                continue;
            }
            if let Some(&other) = owner.get(&s) {
                if other != d {
                    return Err(format!(
                        "static bin {s} spans dynamic bins {other} and {d}; two-time needs every static bin inside one dynamic bin"
                    ));
                }
            }
            owner.insert(s, d);
            by_dq.entry(d).or_default().entry(s).or_default().push(p);
        }
        if let Some(sel) = selection {
            for d in sel {
                if !by_dq.contains_key(d) {
                    return Err(format!("dynamic bin {d} has no valid pixels"));
                }
            }
            by_dq.retain(|d, _| sel.contains(d));
        }
        if by_dq.is_empty() {
            return Err("no dynamic bin has valid pixels".into());
        }
        Ok(TwotimePlan {
            bins: by_dq
                .into_iter()
                .map(|(dq, statics)| DynamicBin {
                    dq,
                    statics: statics.into_iter().collect(),
                })
                .collect(),
        })
    }

    /// Groups of consecutive bins whose smoothed frames (`frames` × pixels ×
    /// 4 bytes) fit `budget` bytes; a bin larger than the budget is a group
    /// of its own.
    pub fn batches(&self, frames: usize, budget: usize) -> Vec<Vec<DynamicBin>> {
        let mut out: Vec<Vec<DynamicBin>> = Vec::new();
        let mut used = 0usize;
        for bin in &self.bins {
            let bytes = frames * bin.pixels() * 4;
            match out.last_mut() {
                Some(group) if used + bytes <= budget => {
                    group.push(bin.clone());
                    used += bytes;
                }
                _ => {
                    out.push(vec![bin.clone()]);
                    used = bytes;
                }
            }
        }
        out
    }
}

/// The frames of a group of bins, smoothed, frame-major (N × P).
pub struct Smoothed {
    pub frames: usize,
    pub pixels: usize,
    pub data: Vec<f32>,
}

/// Collects raw frames for `bins` and smooths them as they arrive.
pub struct Collector {
    bins: Vec<DynamicBin>,
    /// Detector index of each column, in plan order.
    index: Vec<usize>,
    /// Column ranges of each static bin.
    statics: Vec<std::ops::Range<usize>>,
    frames: usize,
    data: Vec<f32>,
    seen: usize,
}

impl Collector {
    pub fn new(bins: Vec<DynamicBin>, frames: usize) -> Self {
        let mut index = Vec::new();
        let mut statics = Vec::new();
        for bin in &bins {
            for (_, px) in &bin.statics {
                let start = index.len();
                index.extend_from_slice(px);
                statics.push(start..index.len());
            }
        }
        let data = vec![0f32; frames * index.len()];
        Collector {
            bins,
            index,
            statics,
            frames,
            data,
            seen: 0,
        }
    }

    /// Adds one detector frame (`frame[pixel]`, any count type as f32).
    pub fn push(&mut self, frame: impl Fn(usize) -> f32) -> Result<(), String> {
        if self.seen == self.frames {
            return Err(format!("more than {} frames pushed", self.frames));
        }
        let p = self.index.len();
        let row = &mut self.data[self.seen * p..(self.seen + 1) * p];
        for (r, &i) in row.iter_mut().zip(&self.index) {
            *r = frame(i);
        }
        for range in &self.statics {
            let vals = &mut row[range.clone()];
            let mean = vals.iter().map(|&x| f64::from(x)).sum::<f64>() / vals.len() as f64;
            let mean = if mean <= 0.0 { 1.0 } else { mean as f32 };
            for v in vals.iter_mut() {
                *v /= mean;
            }
        }
        self.seen += 1;
        Ok(())
    }

    /// Correlates every bin of the group, handing each result to `sink`
    /// (in plan order) so only one N × N map is alive at a time.
    pub fn correlate(
        self,
        mut sink: impl FnMut(BinResult) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.seen != self.frames {
            return Err(format!(
                "{} of {} frames were pushed",
                self.seen, self.frames
            ));
        }
        let n = self.frames;
        let p_all = self.index.len();
        let mut col = 0;
        for bin in &self.bins {
            let p_d = bin.pixels();
            let c = correlate_bin(&self.data, n, p_all, col..col + p_d);
            col += p_d;
            let g2 = diagonal_means(&c, 0..n, n);
            let m = n / 5;
            let mut segments = Array2::<f32>::zeros((m, 5));
            for b in 0..5 {
                let means = diagonal_means(&c, b * m..(b + 1) * m, m);
                for (lag, v) in means.into_iter().enumerate() {
                    segments[[lag, b]] = v;
                }
            }
            sink(BinResult {
                dq: bin.dq,
                c2: c,
                g2,
                segments,
            })?;
        }
        Ok(())
    }
}

/// The two-time result of one dynamic bin.
pub struct BinResult {
    pub dq: u32,
    /// Upper triangle (diagonal included) of C; the lower triangle is 0.
    pub c2: Array2<f32>,
    /// Mean of each diagonal of the full symmetric C, lag 0..N.
    pub g2: Vec<f32>,
    /// (N/5, 5): the same inside each of 5 diagonal blocks of N/5 frames.
    pub segments: Array2<f32>,
}

/// Upper triangle of J Jᵀ · P / (S(t1) S(t2)) for columns `cols` of the
/// frame-major `data` (n rows of `stride` values).
fn correlate_bin(
    data: &[f32],
    n: usize,
    stride: usize,
    cols: std::ops::Range<usize>,
) -> Array2<f32> {
    let p = cols.len();
    let mut c = Array2::<f32>::zeros((n, n));
    if n == 0 || p == 0 {
        return c;
    }
    crate::blas::single_threaded();
    let a = &data[cols.start..];
    let flat = c.as_slice_mut().expect("standard layout");
    // Row strips of C are independent: each is one SSYRK on its diagonal
    // tile and one SGEMM right of it, and rayon spreads the strips.
    flat.par_chunks_mut(STRIP * n)
        .enumerate()
        .for_each(|(k, strip)| {
            let r0 = k * STRIP;
            let rows = strip.len() / n;
            // SAFETY: `a` holds n rows of `stride` ≥ p values from
            // cols.start (the last row is cut at the slice end, past its p
            // values); `strip` is rows r0..r0+rows of the n × n row-major C,
            // and both calls write only columns ≥ r0 of those rows.
            unsafe {
                let a_rows = a.as_ptr().add(r0 * stride);
                cblas_sys::cblas_ssyrk(
                    cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
                    cblas_sys::CBLAS_UPLO::CblasUpper,
                    cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                    rows as i32,
                    p as i32,
                    1.0,
                    a_rows,
                    stride as i32,
                    0.0,
                    strip.as_mut_ptr().add(r0),
                    n as i32,
                );
                let right = n - r0 - rows;
                if right > 0 {
                    cblas_sys::cblas_sgemm(
                        cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
                        cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                        cblas_sys::CBLAS_TRANSPOSE::CblasTrans,
                        rows as i32,
                        right as i32,
                        p as i32,
                        1.0,
                        a_rows,
                        stride as i32,
                        a.as_ptr().add((r0 + rows) * stride),
                        stride as i32,
                        0.0,
                        strip.as_mut_ptr().add(r0 + rows),
                        n as i32,
                    );
                }
            }
        });
    let s: Vec<f32> = (0..n)
        .map(|t| {
            let v: f64 = data[t * stride + cols.start..t * stride + cols.end]
                .iter()
                .map(|&x| f64::from(x))
                .sum();
            if v <= 0.0 {
                1.0
            } else {
                v as f32
            }
        })
        .collect();
    let scale = p as f32;
    for i in 0..n {
        let row = c.row_mut(i).into_slice().expect("row-major");
        for j in i..n {
            row[j] *= scale / (s[i] * s[j]);
        }
    }
    c
}

/// Rows of C per parallel work item.
const STRIP: usize = 128;

/// Mean of each diagonal lag = 0..len of the symmetric matrix whose upper
/// triangle is `c`, restricted to rows and columns in `block`.
fn diagonal_means(c: &Array2<f32>, block: std::ops::Range<usize>, len: usize) -> Vec<f32> {
    (0..len)
        .map(|lag| {
            let rows = block.start..block.end.saturating_sub(lag);
            if rows.is_empty() {
                return 0.0;
            }
            let sum: f64 = rows.clone().map(|i| f64::from(c[[i, i + lag]])).sum();
            (sum / rows.len() as f64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn qmap_2x2_bins() -> QMap {
        // 6 × 4 detector: dq 1 = rows 0–2 (sq 1, 2), dq 2 = rows 3–5 (sq 3);
        // one masked pixel.
        let (h, w) = (6, 4);
        let mut q = QMap {
            width: w,
            height: h,
            mask: vec![1; h * w],
            sqmap: vec![0; h * w],
            dqmap: vec![0; h * w],
            sq_values: vec![0.1, 0.2, 0.3],
            dq_values: vec![0.15, 0.3],
        };
        for p in 0..h * w {
            let row = p / w;
            q.dqmap[p] = if row < 3 { 1 } else { 2 };
            q.sqmap[p] = if row < 2 {
                1
            } else if row < 3 {
                2
            } else {
                3
            };
        }
        q.mask[5] = 0;
        q
    }

    /// C straight from the definition, in f64, full matrix.
    fn oracle(frames: &[Vec<f64>], bin: &DynamicBin) -> Vec<Vec<f64>> {
        let n = frames.len();
        let mut j = vec![Vec::new(); n];
        for (t, f) in frames.iter().enumerate() {
            for (_, px) in &bin.statics {
                let mean = px.iter().map(|&p| f[p]).sum::<f64>() / px.len() as f64;
                let mean = if mean <= 0.0 { 1.0 } else { mean };
                j[t].extend(px.iter().map(|&p| f[p] / mean));
            }
        }
        let s: Vec<f64> = j
            .iter()
            .map(|r| {
                let v: f64 = r.iter().sum();
                if v <= 0.0 {
                    1.0
                } else {
                    v
                }
            })
            .collect();
        let p = bin.pixels() as f64;
        (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| {
                        let dot: f64 = j[a].iter().zip(&j[b]).map(|(x, y)| x * y).sum();
                        dot * p / (s[a] * s[b])
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_the_definition() {
        // One strip, and several (diagonal SSYRK tiles + SGEMM beside them).
        for n in [23, 2 * STRIP + 37] {
            matches_the_definition_for(n);
        }
    }

    fn matches_the_definition_for(n: usize) {
        let q = qmap_2x2_bins();
        let plan = TwotimePlan::new(&q, None).unwrap();
        assert_eq!(plan.bins.len(), 2);
        assert_eq!(plan.bins[0].pixels(), 11);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let frames: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                (0..24)
                    .map(|_| f64::from(rng.random_range(0..6u8)))
                    .collect()
            })
            .collect();
        let mut col = Collector::new(plan.bins.clone(), n);
        for f in &frames {
            col.push(|i| f[i] as f32).unwrap();
        }
        let mut got = Vec::new();
        col.correlate(|r| {
            got.push(r);
            Ok(())
        })
        .unwrap();
        for (res, bin) in got.iter().zip(&plan.bins) {
            assert_eq!(res.dq, bin.dq);
            let want = oracle(&frames, bin);
            for ((a, b), &got) in res.c2.indexed_iter() {
                let v = f64::from(got);
                let w = if b >= a { want[a][b] } else { 0.0 };
                assert!(
                    (v - w).abs() < 1e-5 * w.abs().max(1.0),
                    "C[{a},{b}] {v} vs {w}"
                );
            }
            for lag in [0, 1, 7, n - 1] {
                let w: f64 = (0..n - lag).map(|i| want[i][i + lag]).sum::<f64>() / (n - lag) as f64;
                assert!((f64::from(res.g2[lag]) - w).abs() < 1e-5, "lag {lag}");
            }
            // Block 2 covers frames 2m..3m (m = N/5); lag 1 has m - 1 pairs.
            let m = n / 5;
            let w: f64 = (2 * m..3 * m - 1).map(|i| want[i][i + 1]).sum::<f64>() / (m - 1) as f64;
            assert!((f64::from(res.segments[[1, 2]]) - w).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_plans_are_errors() {
        let mut q = qmap_2x2_bins();
        q.dqmap[0] = 2; // static bin 1 now spans dq 1 and 2
        let e = TwotimePlan::new(&q, None).unwrap_err();
        assert!(e.contains("static bin 1 spans dynamic bins"), "{e}");
        let q = qmap_2x2_bins();
        let e = TwotimePlan::new(&q, Some(&[7])).unwrap_err();
        assert_eq!(e, "dynamic bin 7 has no valid pixels");
        let plan = TwotimePlan::new(&q, Some(&[2])).unwrap();
        assert_eq!(plan.bins.len(), 1);
        // Budget for one bin at a time.
        let plan = TwotimePlan::new(&q, None).unwrap();
        assert_eq!(plan.batches(10, 11 * 10 * 4).len(), 2);
        assert_eq!(plan.batches(10, 1 << 20).len(), 1);
    }
}
