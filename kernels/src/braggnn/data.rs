//! From stored patches to the network's inputs and targets: a `psz`-square
//! crop (shifted for augmentation), min–max normalised to [0, 1], and the
//! target `(x, y) = (column, row)/psz` of the peak centre in the crop.

use crate::synthetic::braggnn::PatchSet;

/// Appends patch `i` of `set` cropped at offset `(aug + dy, aug + dx)` —
/// `dy, dx ∈ −aug..=aug` — and normalised, to `x`, and its target to `y`.
pub fn push_crop(
    set: &PatchSet,
    i: usize,
    (dy, dx): (i64, i64),
    x: &mut Vec<f32>,
    y: &mut Vec<f32>,
) {
    let (side, psz, aug) = (set.side(), set.psz, set.aug as i64);
    debug_assert!(dy.abs() <= aug && dx.abs() <= aug);
    let (r0, c0) = ((aug + dy) as usize, (aug + dx) as usize);
    let p = set.patch(i);
    let start = x.len();
    for r in r0..r0 + psz {
        x.extend_from_slice(&p[r * side + c0..r * side + c0 + psz]);
    }
    normalise(&mut x[start..]);
    let c = set.centres[i];
    y.push(((c[1] - c0 as f64) / psz as f64) as f32);
    y.push(((c[0] - r0 as f64) / psz as f64) as f32);
}

/// Patches `idx` of `set`, unshifted, as network inputs and targets.
pub fn crops(set: &PatchSet, idx: impl IntoIterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in idx {
        push_crop(set, i, (0, 0), &mut x, &mut y);
    }
    (x, y)
}

/// Centre errors, px: predicted against target (x, y)/psz, scaled by psz.
pub fn errors_px(pred: &[[f32; 2]], targets: &[f32], psz: usize) -> Vec<f64> {
    pred.iter()
        .zip(targets.chunks_exact(2))
        .map(|(p, t)| f64::from(p[0] - t[0]).hypot(f64::from(p[1] - t[1])) * psz as f64)
        .collect()
}

/// Min–max to [0, 1] (BraggNN's input scaling); a flat patch is left as is.
pub fn normalise(p: &mut [f32]) {
    let (lo, hi) = p
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if hi > lo {
        let k = 1.0 / (hi - lo);
        p.iter_mut().for_each(|v| *v = (*v - lo) * k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_carry_their_targets() {
        // One 5×5 patch (psz 3, aug 1) with the peak centre at (2.2, 1.6).
        let set = PatchSet {
            psz: 3,
            aug: 1,
            pixels: (0..25).map(|v| v as f32).collect(),
            centres: vec![[2.2, 1.6]],
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        push_crop(&set, 0, (0, 0), &mut x, &mut y);
        push_crop(&set, 0, (1, -1), &mut x, &mut y);
        // Unshifted: rows 1..4, cols 1..4 → 6,7,8 / 11,12,13 / 16,17,18.
        assert_eq!(x[0], 0.0);
        assert_eq!(x[8], 1.0);
        assert!((x[4] - 0.5).abs() < 1e-6);
        assert!(
            (y[0] - 0.6 / 3.0).abs() < 1e-6 && (y[1] - 1.2 / 3.0).abs() < 1e-6,
            "{y:?}"
        );
        // Shifted down 1, left 1: origin (2, 0) → centre (0.2, 1.6).
        assert!(
            (y[2] - 1.6 / 3.0).abs() < 1e-6 && (y[3] - 0.2 / 3.0).abs() < 1e-6,
            "{y:?}"
        );
        let mut flat = vec![3.0f32; 4];
        normalise(&mut flat);
        assert_eq!(flat, vec![3.0; 4]);
    }
}
