//! Single-peak patches with known centres, for training and testing
//! BraggNN (the reference's recipe): one MIDAS pseudo-Voigt peak from the
//! HEDM generator's distribution, its true centre uniform within the
//! window's centre pixel, a background of 10 counts and Poisson noise; the
//! window is then re-centred on the noisy maximum pixel, as inference crops
//! around a region's maximum.
//!
//! Each patch is stored `aug` pixels larger on every side than the network
//! sees, so training can crop it shifted by up to `aug` px (BraggNN's
//! augmentation) without inventing pixels.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;

use super::hedm::random_profile;
use crate::hedm::model;

/// Background counts under every peak.
pub const BACKGROUND: f64 = 10.0;

/// Patches of side `psz + 2·aug` with their true peak centres.
#[derive(Clone, Debug)]
pub struct PatchSet {
    /// The network's patch side.
    pub psz: usize,
    /// Extra pixels on each side for shifted crops.
    pub aug: usize,
    /// Counts, patch-major, each `side × side` row-major.
    pub pixels: Vec<f32>,
    /// True centre (row, col) of each patch's peak, in its pixel
    /// coordinates (pixel centres at integers).
    pub centres: Vec<[f64; 2]>,
}

impl PatchSet {
    pub fn side(&self) -> usize {
        self.psz + 2 * self.aug
    }

    pub fn len(&self) -> usize {
        self.centres.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    pub fn patch(&self, i: usize) -> &[f32] {
        let s = self.side() * self.side();
        &self.pixels[i * s..(i + 1) * s]
    }
}

/// `n` patches for a `psz` network with `aug` px of margin, reproducible
/// from `seed` whatever the number of threads.
pub fn patches(n: usize, psz: usize, aug: usize, seed: u64) -> PatchSet {
    let side = psz + 2 * aug;
    // Rendered larger, so that the crop around the noisy maximum (which
    // can be a pixel or two from the true centre) stays inside.
    let big = side + 8;
    let c0 = (big / 2) as f64;
    let per: Vec<(Vec<f32>, [f64; 2])> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let [height, mu, sgu, glu, sgv, glv] = random_profile(&mut rng);
            let (row, col) = (
                c0 + rng.random_range(-0.5..0.5),
                c0 + rng.random_range(-0.5..0.5),
            );
            let params = [height, row, col, mu, sgu, glu, sgv, glv];
            let mut counts = vec![0f32; big * big];
            for (k, v) in counts.iter_mut().enumerate() {
                let m = BACKGROUND + model::peak(&params, (k / big) as f64, (k % big) as f64);
                let d = Poisson::new(m).expect("a positive mean");
                *v = d.sample(&mut rng) as f32;
            }
            // The maximum within ±2 px of the centre (noise elsewhere can
            // top a weak peak; the search's regions would not join it).
            let (mut best, mut at) = (f32::NEG_INFINITY, (big / 2, big / 2));
            for r in big / 2 - 2..=big / 2 + 2 {
                for c in big / 2 - 2..=big / 2 + 2 {
                    if counts[r * big + c] > best {
                        best = counts[r * big + c];
                        at = (r, c);
                    }
                }
            }
            let (r0, c0) = (at.0 - side / 2, at.1 - side / 2);
            let mut out = Vec::with_capacity(side * side);
            for r in r0..r0 + side {
                out.extend_from_slice(&counts[r * big + c0..r * big + c0 + side]);
            }
            (out, [row - r0 as f64, col - c0 as f64])
        })
        .collect();
    let mut set = PatchSet {
        psz,
        aug,
        pixels: Vec::with_capacity(n * side * side),
        centres: Vec::with_capacity(n),
    };
    for (p, c) in per {
        set.pixels.extend_from_slice(&p);
        set.centres.push(c);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_sit_near_the_middle_and_repeat_from_the_seed() {
        let a = patches(200, 11, 1, 5);
        let b = patches(200, 11, 1, 5);
        assert_eq!(a.pixels, b.pixels);
        assert_eq!(a.side(), 13);
        for (i, c) in a.centres.iter().enumerate() {
            // Within the maximum-search window of the centre pixel.
            assert!(
                (c[0] - 6.0).abs() <= 2.5 && (c[1] - 6.0).abs() <= 2.5,
                "{c:?}"
            );
            let p = a.patch(i);
            let max = p.iter().copied().fold(0.0, f32::max);
            assert!(max >= 50.0, "patch {i}: max {max}");
        }
        let mean_offset: f64 = a
            .centres
            .iter()
            .map(|c| (c[0] - 6.0).hypot(c[1] - 6.0))
            .sum::<f64>()
            / 200.0;
        assert!(mean_offset < 0.8, "{mean_offset}");
    }
}
