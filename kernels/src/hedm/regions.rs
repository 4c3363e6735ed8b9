//! Finding peak regions in a frame, as MIDAS's `processImageFrame` does:
//! correct each pixel (dark, flood), zero what is masked or below its
//! threshold, group what is left by 8-connectivity, drop regions that are too
//! small, too large or saturated, and seed one peak per regional maximum.

use rayon::prelude::*;

use super::init::Geometry;

/// Which threshold a pixel must reach.
#[derive(Clone, Debug, PartialEq)]
pub enum Threshold {
    /// One value everywhere (MIDAS `DoFullImage 1`).
    Global(f64),
    /// Per diffraction ring: pixels whose radius lies within ±`width` px of a
    /// ring's radius take its threshold; all other pixels are ignored.
    Rings {
        row0: f64,
        col0: f64,
        rings: Vec<Ring>,
    },
}

impl Threshold {
    /// The threshold of pixel (row, col); `None` where no ring passes.
    #[inline]
    pub fn at(&self, row: usize, col: usize) -> Option<f32> {
        match self {
            Threshold::Global(g) => Some(*g as f32),
            Threshold::Rings { row0, col0, rings } => {
                let rad = ((row as f64 - row0).powi(2) + (col as f64 - col0).powi(2)).sqrt();
                rings
                    .iter()
                    .find(|g| (rad - g.radius).abs() <= g.width)
                    .map(|g| g.threshold as f32)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    pub radius: f64,
    pub width: f64,
    pub threshold: f64,
}

/// Knobs of the search, MIDAS's defaults.
#[derive(Clone, Debug)]
pub struct FindOptions {
    pub threshold: Threshold,
    /// Regions need more than `min_pixels` and fewer than `max_pixels` pixels.
    pub min_pixels: usize,
    pub max_pixels: usize,
    /// A region with any pixel above this is saturated and dropped.
    pub saturation: f64,
    /// At most this many peaks per region (the brightest maxima).
    pub max_peaks: usize,
    /// Drop a maximum whose value stands less than this above the lowest
    /// pixel on the straight path to a brighter kept maximum (MIDAS has no
    /// such test: Poisson noise then seeds extra peaks). Off when `None`.
    pub prominence: Option<f64>,
    /// At most this many regions per frame (MIDAS: 10,000).
    pub max_regions: usize,
}

impl Default for FindOptions {
    fn default() -> Self {
        FindOptions {
            threshold: Threshold::Global(30.0),
            min_pixels: 1,
            max_pixels: 10_000,
            saturation: 14_000.0,
            max_peaks: 400,
            prominence: None,
            max_regions: 10_000,
        }
    }
}

/// Per-pixel corrections applied before the threshold.
#[derive(Clone, Copy, Default)]
pub struct Corrections<'a> {
    pub dark: Option<&'a [f32]>,
    /// Subtracted from every pixel (with or without a dark image).
    pub dark_value: f32,
    pub flood: Option<&'a [f32]>,
    /// Non-zero: the pixel is bad and ignored.
    pub mask: Option<&'a [u8]>,
}

/// One region: its pixels in scan order and its peaks' maximum pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub rows: Vec<u32>,
    pub cols: Vec<u32>,
    /// Corrected intensities.
    pub z: Vec<f64>,
    /// Indices into the pixel lists, brightest first.
    pub maxima: Vec<usize>,
    /// The threshold at the region's first pixel (bounds the background).
    pub threshold: f64,
    /// A pixel touches a masked pixel.
    pub mask_touched: bool,
}

/// Counts of what the search kept and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FindStats {
    pub regions: usize,
    pub too_small: usize,
    pub too_large: usize,
    pub saturated: usize,
    pub over_limit: usize,
}

/// Buffers reused from frame to frame: a 2048² frame needs 32 MB of them,
/// and fresh pages cost more than the arithmetic.
#[derive(Default)]
pub struct Scratch {
    /// The corrected, thresholded frame (0 where nothing is).
    pub img: Vec<f32>,
    labels: Vec<u32>,
}

/// Corrects `raw` into `s.img`: (raw − dark)/flood where it reaches the
/// pixel's threshold, 0 elsewhere (masked, off the rings, below threshold).
/// Rows are done in parallel.
pub fn correct(
    raw: &[f32],
    rows: usize,
    cols: usize,
    c: &Corrections,
    t: &Threshold,
    s: &mut Scratch,
) {
    let n = rows * cols;
    // Every pixel is written below: no need to clear.
    s.img.resize(n, 0.0);
    let plain = c.mask.is_none() && c.dark.is_none() && c.flood.is_none();
    s.img[..n]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(r, out)| {
            let base = r * cols;
            let row = &raw[base..base + cols];
            if let (true, Threshold::Global(g)) = (plain, t) {
                // The common case, branch-free so that it vectorises.
                let (th, dv) = (*g as f32, c.dark_value);
                for (o, &x) in out.iter_mut().zip(row) {
                    let v = x - dv;
                    *o = if v >= th && v > 0.0 { v } else { 0.0 };
                }
                return;
            }
            for (col, o) in out.iter_mut().enumerate() {
                let i = base + col;
                *o = 0.0;
                if c.mask.is_some_and(|m| m[i] != 0) {
                    continue;
                }
                let Some(th) = t.at(r, col) else {
                    continue;
                };
                let mut v = row[col] - c.dark_value;
                if let Some(d) = c.dark {
                    v -= d[i];
                }
                if let Some(f) = c.flood {
                    if f[i] > 0.0 {
                        v /= f[i];
                    }
                }
                if v >= th && v > 0.0 {
                    *o = v;
                }
            }
        });
}

/// Regions of the frame [`correct`] left in `s`.
pub fn find(
    s: &mut Scratch,
    rows: usize,
    cols: usize,
    mask: Option<&[u8]>,
    o: &FindOptions,
) -> (Vec<Region>, FindStats) {
    let labels = label(&s.img[..rows * cols], rows, cols, &mut s.labels);
    let img = &s.img[..rows * cols];
    let mut stats = FindStats::default();
    let mut regions = Vec::with_capacity(labels.len());
    for pixels in labels {
        let npx = pixels.len();
        if npx <= o.min_pixels {
            stats.too_small += 1;
            continue;
        }
        if npx >= o.max_pixels {
            stats.too_large += 1;
            continue;
        }
        if pixels
            .iter()
            .any(|&i| img[i as usize] as f64 > o.saturation)
        {
            stats.saturated += 1;
            continue;
        }
        if regions.len() >= o.max_regions {
            stats.over_limit += 1;
            continue;
        }
        let mut reg = Region {
            rows: pixels.iter().map(|&i| i / cols as u32).collect(),
            cols: pixels.iter().map(|&i| i % cols as u32).collect(),
            z: pixels.iter().map(|&i| img[i as usize] as f64).collect(),
            maxima: Vec::new(),
            threshold: o
                .threshold
                .at((pixels[0] as usize) / cols, (pixels[0] as usize) % cols)
                .unwrap_or(0.0) as f64,
            mask_touched: false,
        };
        let mut touched = false;
        for (k, &i) in pixels.iter().enumerate() {
            let (r, c) = (reg.rows[k] as usize, reg.cols[k] as usize);
            let v = img[i as usize];
            let mut is_max = true;
            for (nr, nc) in neighbours(r, c, rows, cols) {
                let j = nr * cols + nc;
                if img[j] > v {
                    is_max = false;
                }
                if mask.is_some_and(|m| m[j] != 0) {
                    touched = true;
                }
            }
            if is_max {
                reg.maxima.push(k);
            }
        }
        reg.mask_touched = touched;
        if reg.maxima.is_empty() {
            reg.maxima.push(npx / 2);
        }
        reg.maxima
            .sort_by(|&a, &b| reg.z[b].total_cmp(&reg.z[a]).then(a.cmp(&b)));
        if let Some(p) = o.prominence {
            reg.maxima = prominent(&reg, img, cols, p);
        }
        reg.maxima.truncate(o.max_peaks);
        regions.push(reg);
    }
    stats.regions = regions.len();
    (regions, stats)
}

/// The up to 8 neighbours of (r, c) inside the frame.
fn neighbours(
    r: usize,
    c: usize,
    rows: usize,
    cols: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let (r, c) = (r as isize, c as isize);
    (-1isize..=1)
        .flat_map(move |dr| (-1isize..=1).map(move |dc| (dr, dc)))
        .filter(|&(dr, dc)| dr != 0 || dc != 0)
        .map(move |(dr, dc)| (r + dr, c + dc))
        .filter(move |&(nr, nc)| nr >= 0 && nc >= 0 && nr < rows as isize && nc < cols as isize)
        .map(|(nr, nc)| (nr as usize, nc as usize))
}

/// Maxima (brightest first) that stand at least `p` above the lowest pixel
/// on the straight path to every brighter kept maximum.
fn prominent(reg: &Region, img: &[f32], cols: usize, p: f64) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for &m in &reg.maxima {
        let (r0, c0) = (reg.rows[m] as f64, reg.cols[m] as f64);
        let ok = kept.iter().all(|&h| {
            let (r1, c1) = (reg.rows[h] as f64, reg.cols[h] as f64);
            let steps = ((r1 - r0).abs().max((c1 - c0).abs()) as usize).max(1);
            let mut low = f64::INFINITY;
            for s in 0..=steps {
                let t = s as f64 / steps as f64;
                let (r, c) = ((r0 + t * (r1 - r0)).round(), (c0 + t * (c1 - c0)).round());
                low = low.min(img[r as usize * cols + c as usize] as f64);
            }
            reg.z[m] - low >= p
        });
        if ok {
            kept.push(m);
        }
    }
    kept
}

/// 8-connected components of the non-zero pixels, each a list of pixel
/// indices in row-major order; components ordered by their first pixel.
/// `lab` is scratch space (all zero between calls).
pub fn label(img: &[f32], rows: usize, cols: usize, lab: &mut Vec<u32>) -> Vec<Vec<u32>> {
    // Union-find over provisional labels, one pass over the frame.
    lab.resize(rows * cols, 0);
    let mut parent: Vec<u32> = vec![0];
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    let mut fg: Vec<u32> = Vec::new();
    const RUN: usize = 16;
    for r in 0..rows {
        let row = &img[r * cols..(r + 1) * cols];
        let mut c = 0;
        while c < cols {
            // Most of a frame is empty: skip whole runs of zeros at once.
            if c % RUN == 0 && c + RUN <= cols && row[c..c + RUN].iter().all(|&v| v == 0.0) {
                c += RUN;
                continue;
            }
            let i = r * cols + c;
            if row[c] == 0.0 {
                c += 1;
                continue;
            }
            fg.push(i as u32);
            let mut l = 0u32;
            let join = |other: u32, l: &mut u32, parent: &mut Vec<u32>| {
                if other == 0 {
                    return;
                }
                if *l == 0 {
                    *l = other;
                } else {
                    let (a, b) = (find(parent, *l), find(parent, other));
                    if a != b {
                        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                        parent[hi as usize] = lo;
                        *l = lo;
                    }
                }
            };
            if c > 0 {
                join(lab[i - 1], &mut l, &mut parent);
            }
            if r > 0 {
                let up = i - cols;
                if c > 0 {
                    join(lab[up - 1], &mut l, &mut parent);
                }
                join(lab[up], &mut l, &mut parent);
                if c + 1 < cols {
                    join(lab[up + 1], &mut l, &mut parent);
                }
            }
            if l == 0 {
                l = parent.len() as u32;
                parent.push(l);
            }
            lab[i] = l;
            c += 1;
        }
    }
    // Roots in order of first appearance → components.
    let mut slot = vec![u32::MAX; parent.len()];
    let mut comps: Vec<Vec<u32>> = Vec::new();
    for &i in &fg {
        let root = find(&mut parent, lab[i as usize]);
        if slot[root as usize] == u32::MAX {
            slot[root as usize] = comps.len() as u32;
            comps.push(Vec::new());
        }
        comps[slot[root as usize] as usize].push(i);
    }
    for &i in &fg {
        lab[i as usize] = 0;
    }
    comps
}

/// Fitting coordinates of a region's pixels.
pub fn coords(reg: &Region, geom: Geometry) -> (Vec<f64>, Vec<f64>) {
    reg.rows
        .iter()
        .zip(&reg.cols)
        .map(|(&r, &c)| geom.coords(r as f64, c as f64))
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: usize, cols: usize, on: &[(usize, usize, f32)]) -> Vec<f32> {
        let mut f = vec![0f32; rows * cols];
        for &(r, c, v) in on {
            f[r * cols + c] = v;
        }
        f
    }

    #[test]
    fn eight_connectivity_joins_diagonals_and_merges_u_shapes() {
        // A diagonal pair, a U whose arms meet only at the bottom, a lone pixel.
        let img = frame(
            6,
            8,
            &[
                (0, 0, 1.0),
                (1, 1, 1.0),
                (0, 4, 1.0),
                (1, 4, 1.0),
                (2, 4, 1.0),
                (2, 5, 1.0),
                (2, 6, 1.0),
                (1, 6, 1.0),
                (0, 6, 1.0),
                (5, 7, 1.0),
            ],
        );
        let comps = label(&img, 6, 8, &mut Vec::new());
        let sizes: Vec<usize> = comps.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 7, 1]);
        assert_eq!(comps[0], vec![0, 9]);
    }

    #[test]
    fn regions_follow_midas_rules() {
        let mut on = vec![(0, 0, 50.0)]; // single pixel: dropped (needs > 1)
                                         // Two maxima joined by a saddle.
        for (c, v) in [(2, 40.0), (3, 90.0), (4, 60.0), (5, 80.0), (6, 35.0)] {
            on.push((3, c, v));
        }
        // A saturated region.
        on.push((6, 2, 100.0));
        on.push((6, 3, 20000.0));
        let mut s = Scratch {
            img: frame(8, 8, &on),
            ..Scratch::default()
        };
        let (regs, st) = find(&mut s, 8, 8, None, &FindOptions::default());
        assert_eq!(
            st,
            FindStats {
                regions: 1,
                too_small: 1,
                too_large: 0,
                saturated: 1,
                over_limit: 0
            }
        );
        let r = &regs[0];
        assert_eq!(r.cols, vec![2, 3, 4, 5, 6]);
        // Maxima brightest first: 90 then 80.
        assert_eq!(
            r.maxima.iter().map(|&k| r.z[k]).collect::<Vec<_>>(),
            vec![90.0, 80.0]
        );
        // A prominence filter of 25 drops the 80 (only 20 above the 60 saddle).
        let o = FindOptions {
            prominence: Some(25.0),
            ..FindOptions::default()
        };
        let (regs, _) = find(&mut s, 8, 8, None, &o);
        assert_eq!(regs[0].maxima.len(), 1);
    }

    #[test]
    fn corrections_and_ring_thresholds() {
        let raw = vec![100f32; 16];
        let dark = vec![10f32; 16];
        let mut flood = vec![1f32; 16];
        flood[5] = 2.0;
        let mut mask = vec![0u8; 16];
        mask[6] = 1;
        let c = Corrections {
            dark: Some(&dark),
            dark_value: 0.0,
            flood: Some(&flood),
            mask: Some(&mask),
        };
        let mut s = Scratch::default();
        correct(&raw, 4, 4, &c, &Threshold::Global(50.0), &mut s);
        assert_eq!(s.img[0], 90.0);
        assert_eq!(s.img[5], 0.0); // 45 < 50
        assert_eq!(s.img[6], 0.0); // masked
        let t = Threshold::Rings {
            row0: 0.0,
            col0: 0.0,
            rings: vec![Ring {
                radius: 3.0,
                width: 0.5,
                threshold: 10.0,
            }],
        };
        correct(&raw, 4, 4, &Corrections::default(), &t, &mut s);
        assert_eq!(s.img[3], 100.0); // (0,3): radius 3
        assert_eq!(t.at(0, 3), Some(10.0));
        assert_eq!(s.img[0], 0.0); // radius 0: on no ring
        assert_eq!(t.at(0, 0), None);
    }
}
