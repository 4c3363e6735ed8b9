//! Patches cut from detector frames, for inference and for training on
//! real peaks: a square around a peak's brightest pixel, the counts
//! dark- and flood-corrected but not thresholded (the network learns on
//! peaks over their background), then "cleaned" as BraggNN's data loader
//! does — pixels of *other* peaks that reach into the window are removed —
//! so that the network sees one peak.
//!
//! Cleaning, precisely: a pixel above the search threshold belongs to the
//! peak when it is 8-connected to the centre pixel through pixels above
//! the threshold inside the window; every other pixel above the threshold
//! belongs to a neighbour and, with masked pixels and pixels beyond the
//! frame's edge, takes the window's background: the median of its pixels
//! below the threshold. (Upstream works on thresholded frames and sets
//! them to 0; on unthresholded counts the background is what a lone peak's
//! window shows there.) Two peaks of one region are connected and stay
//! together: such patches are flagged by the caller.

use crate::hedm::regions::Corrections;

/// One frame as the search left it.
pub struct FrameView<'a> {
    /// The frame's counts, row-major.
    pub raw: &'a [f32],
    /// The search's corrected and thresholded image
    /// ([`crate::hedm::regions::correct`]): > 0 where a pixel reaches its
    /// threshold.
    pub img: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub corr: Corrections<'a>,
}

/// What cutting one patch found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Frame coordinates (row, col) of the window's top-left pixel.
    pub corner: [i64; 2],
    /// Pixels replaced by the background: of other peaks, masked, or
    /// beyond the frame.
    pub replaced: u32,
    /// The window leaves the frame.
    pub edge: bool,
}

impl FrameView<'_> {
    /// The corrected count of pixel `i`, `None` where masked.
    fn value(&self, i: usize) -> Option<f32> {
        let c = &self.corr;
        if c.mask.is_some_and(|m| m[i] != 0) {
            return None;
        }
        let mut v = self.raw[i] - c.dark_value;
        if let Some(d) = c.dark {
            v -= d[i];
        }
        if let Some(f) = c.flood.filter(|f| f[i] > 0.0) {
            v /= f[i];
        }
        Some(v)
    }

    /// The brightest corrected pixel within `radius` of `(row, col)`
    /// (clamped to the frame): where a patch for a fitted position is
    /// centred, as inference centres on a region's maximum.
    pub fn brightest_near(&self, row: f64, col: f64, radius: i64) -> (usize, usize) {
        let (r0, c0) = (row.round() as i64, col.round() as i64);
        let clamp = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
        let mut best = (
            f32::NEG_INFINITY,
            (clamp(r0, self.rows), clamp(c0, self.cols)),
        );
        for r in r0 - radius..=r0 + radius {
            for c in c0 - radius..=c0 + radius {
                if r < 0 || c < 0 || r >= self.rows as i64 || c >= self.cols as i64 {
                    continue;
                }
                let i = r as usize * self.cols + c as usize;
                if let Some(v) = self.value(i).filter(|&v| v > best.0) {
                    best = (v, (r as usize, c as usize));
                }
            }
        }
        best.1
    }

    /// Cuts the `side`-square window centred on pixel `(row, col)` into
    /// `out` (row-major, `side²` values) and cleans it. The values are
    /// counts: normalising is the caller's.
    pub fn cut(&self, (row, col): (usize, usize), side: usize, out: &mut [f32]) -> Cut {
        debug_assert_eq!(out.len(), side * side);
        let half = (side / 2) as i64;
        let corner = [row as i64 - half, col as i64 - half];
        // 0: background, 1: above threshold, 2: unusable (masked or outside).
        let mut class = vec![0u8; side * side];
        let mut edge = false;
        for k in 0..side * side {
            let (r, c) = (corner[0] + (k / side) as i64, corner[1] + (k % side) as i64);
            if r < 0 || c < 0 || r >= self.rows as i64 || c >= self.cols as i64 {
                edge = true;
                class[k] = 2;
                continue;
            }
            let i = r as usize * self.cols + c as usize;
            match self.value(i) {
                None => class[k] = 2,
                Some(v) => {
                    out[k] = v;
                    class[k] = u8::from(self.img[i] > 0.0);
                }
            }
        }
        // The centre's component among the pixels above threshold.
        let centre = (half as usize) * side + half as usize;
        let mut own = vec![false; side * side];
        let mut stack = Vec::new();
        if class[centre] == 1 {
            own[centre] = true;
            stack.push(centre);
        }
        while let Some(k) = stack.pop() {
            let (r, c) = ((k / side) as i64, (k % side) as i64);
            for dr in -1..=1 {
                for dc in -1..=1 {
                    let (rr, cc) = (r + dr, c + dc);
                    if rr < 0 || cc < 0 || rr >= side as i64 || cc >= side as i64 {
                        continue;
                    }
                    let j = rr as usize * side + cc as usize;
                    if class[j] == 1 && !own[j] {
                        own[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let mut below: Vec<f32> = (0..side * side)
            .filter(|&k| class[k] == 0)
            .map(|k| out[k])
            .collect();
        let background = if below.is_empty() {
            // Every usable pixel is above threshold: the lowest of them.
            (0..side * side)
                .filter(|&k| class[k] == 1)
                .map(|k| out[k])
                .fold(f32::INFINITY, f32::min)
        } else {
            let mid = below.len() / 2;
            *below.select_nth_unstable_by(mid, f32::total_cmp).1
        };
        let background = if background.is_finite() {
            background
        } else {
            0.0
        };
        let mut replaced = 0;
        for k in 0..side * side {
            if class[k] == 2 || (class[k] == 1 && !own[k]) {
                out[k] = background;
                replaced += 1;
            }
        }
        Cut {
            corner,
            replaced,
            edge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 12×12 frame, background 5, threshold image > 0 where counts ≥ 20.
    fn frame() -> (Vec<f32>, Vec<f32>) {
        let mut raw = vec![5f32; 144];
        // The peak: a plus around (5, 5); a neighbour at (5, 8..=9), not
        // connected to it; a lone hot pixel at (0, 0).
        for (r, c, v) in [
            (5, 5, 100.0),
            (4, 5, 40.0),
            (6, 5, 40.0),
            (5, 4, 40.0),
            (5, 6, 30.0),
            (5, 8, 60.0),
            (5, 9, 50.0),
            (0, 0, 90.0),
        ] {
            raw[r * 12 + c] = v;
        }
        let img = raw
            .iter()
            .map(|&v| if v >= 20.0 { v } else { 0.0 })
            .collect();
        (raw, img)
    }

    #[test]
    fn a_window_keeps_its_peak_and_loses_its_neighbours() {
        let (raw, img) = frame();
        let f = FrameView {
            raw: &raw,
            img: &img,
            rows: 12,
            cols: 12,
            corr: Corrections::default(),
        };
        assert_eq!(f.brightest_near(4.6, 5.4, 1), (5, 5));
        let mut out = vec![0f32; 49];
        let cut = f.cut((5, 5), 7, &mut out);
        assert_eq!(cut.corner, [2, 2]);
        assert!(!cut.edge);
        // Window columns 2..=8: the neighbour's (5, 8) is inside and goes.
        let at = |r: usize, c: usize| out[(r - 2) * 7 + (c - 2)];
        assert_eq!(at(5, 5), 100.0);
        assert_eq!(at(5, 6), 30.0);
        assert_eq!(at(5, 8), 5.0);
        assert_eq!(cut.replaced, 1);
        // At the corner: the hot pixel is the centre; 3 rows and columns
        // of the 7×7 window lie outside and take the background.
        let cut = f.cut((0, 0), 7, &mut out);
        assert!(cut.edge);
        assert_eq!(cut.replaced, 49 - 16);
        assert_eq!(out[3 * 7 + 3], 90.0);
        assert_eq!(out[0], 5.0);
    }

    #[test]
    fn dark_flood_and_mask_apply() {
        let (raw, img) = frame();
        let flood = vec![2f32; 144];
        let mut mask = vec![0u8; 144];
        mask[4 * 12 + 5] = 1;
        let f = FrameView {
            raw: &raw,
            img: &img,
            rows: 12,
            cols: 12,
            corr: Corrections {
                dark: None,
                dark_value: 1.0,
                flood: Some(&flood),
                mask: Some(&mask),
            },
        };
        let mut out = vec![0f32; 9];
        let cut = f.cut((5, 5), 3, &mut out);
        assert_eq!(out[4], 49.5);
        // The masked pixel above the centre takes the background (2).
        assert_eq!(out[1], 2.0);
        assert_eq!(cut.replaced, 1);
    }
}
