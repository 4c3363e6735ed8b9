//! The yardstick BraggNN is judged by: a pseudo-Voigt fit of the whole
//! patch (MIDAS's model, the HEDM kernel's Levenberg–Marquardt), with the
//! reference's patch-fit bounds — background in [0, max], centre within
//! 1.5 px of the maximum pixel, widths in [0.05, psz] px, Mu in [0, 1].

use rayon::prelude::*;

use crate::hedm::lm::{fit, LmOptions, Workspace};
use crate::hedm::model::n_params;
use crate::synthetic::braggnn::PatchSet;

/// The fitted peak centre (row, col) in the pixel coordinates of the
/// `side`×`side` patch `p` (raw counts), or `None` for a flat patch.
pub fn fit_centre(p: &[f32], side: usize, ws: &mut Workspace) -> Option<[f64; 2]> {
    let (mut lo_v, mut hi_v, mut at) = (f64::INFINITY, f64::NEG_INFINITY, 0);
    for (i, &v) in p.iter().enumerate() {
        let v = f64::from(v);
        lo_v = lo_v.min(v);
        if v > hi_v {
            hi_v = v;
            at = i;
        }
    }
    if hi_v <= lo_v {
        return None;
    }
    let (r, c) = ((at / side) as f64, (at % side) as f64);
    let w = side as f64;
    // [BG, IMax, row, col, Mu, σG row, γL row, σG col, γL col]
    let mut x = [lo_v, hi_v - lo_v, r, c, 0.5, 1.0, 1.0, 1.0, 1.0];
    let lo = [0.0, 0.0, r - 1.5, c - 1.5, 0.0, 0.05, 0.05, 0.05, 0.05];
    let hi = [hi_v, 2.0 * (hi_v - lo_v), r + 1.5, c + 1.5, 1.0, w, w, w, w];
    debug_assert_eq!(x.len(), n_params(1));
    let u: Vec<f64> = (0..side * side).map(|i| (i / side) as f64).collect();
    let v: Vec<f64> = (0..side * side).map(|i| (i % side) as f64).collect();
    let z: Vec<f64> = p.iter().map(|&q| f64::from(q)).collect();
    fit(&mut x, &lo, &hi, &u, &v, &z, &LmOptions::default(), ws);
    Some([x[2], x[3]])
}

/// The fit's centre error, px, on each patch of `set` (the unshifted
/// `psz` window the network sees), in parallel; a flat patch counts as
/// infinitely wrong.
pub fn errors(set: &PatchSet) -> Vec<f64> {
    let (psz, side, aug) = (set.psz, set.side(), set.aug);
    (0..set.len())
        .into_par_iter()
        .map_init(Workspace::default, |ws, i| {
            let p = set.patch(i);
            let crop: Vec<f32> = (aug..aug + psz)
                .flat_map(|r| p[r * side + aug..r * side + aug + psz].iter().copied())
                .collect();
            let t = set.centres[i];
            fit_centre(&crop, psz, ws).map_or(f64::INFINITY, |c| {
                (c[0] + aug as f64 - t[0]).hypot(c[1] + aug as f64 - t[1])
            })
        })
        .collect()
}
