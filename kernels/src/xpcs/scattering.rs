//! The time-averaged scattering products of a multi-tau run
//! (reference/xpcs.md §1.6): the average SAXS image and its static-bin
//! profile.

use ndarray::Array2;

use super::QMap;

/// Mean intensity per detector pixel: the correlated pixels' means put back
/// on the (H, W) detector, zero elsewhere (the mask stands in for a blemish map).
pub fn saxs_2d(mean: &[f64], pixels: &[usize], qmap: &QMap) -> Array2<f32> {
    let mut img = Array2::<f32>::zeros((qmap.height, qmap.width));
    let flat = img.as_slice_mut().expect("standard layout");
    for (&m, &p) in mean.iter().zip(pixels) {
        flat[p] = m as f32 * f32::from(qmap.mask[p]);
    }
    img
}

/// Mean of the SAXS image over each static bin, dividing by the bin's pixel
/// count over the whole detector as the reference does; empty bins are left
/// out. Returns (static bin number, value) pairs.
pub fn saxs_1d(img: &Array2<f32>, qmap: &QMap) -> Vec<(u32, f32)> {
    let n_sq = qmap.n_sq();
    let mut sum = vec![0f64; n_sq + 1];
    let mut count = vec![0f64; n_sq + 1];
    for (p, &v) in img.iter().enumerate() {
        let s = qmap.sqmap[p] as usize;
        sum[s] += f64::from(v);
        count[s] += 1.0;
    }
    (1..=n_sq)
        .filter(|&s| count[s] > 0.0)
        .map(|s| (s as u32, (sum[s] / count[s]) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::xpcs::{generate, SpeckleConfig};
    use crate::xpcs::Multitau;

    #[test]
    fn averages_match_a_direct_computation_and_the_generated_profile() {
        let cfg = SpeckleConfig {
            size: 64,
            frames: 300,
            mean_count: 2.0,
            ..Default::default()
        };
        let data = generate(&cfg);
        let qmap = data.scene.qmap();
        let pixels = qmap.valid_pixels();
        let npx = 64 * 64;
        let frames: Vec<f32> = data
            .frames
            .chunks_exact(npx)
            .flat_map(|f| pixels.iter().map(move |&p| f32::from(f[p])))
            .collect();
        let mut mt = Multitau::new(300, pixels.len());
        mt.push(&frames).unwrap();
        let sums = mt.finish().unwrap();
        // Intensity vs time: the mean over the correlated pixels of each frame.
        for t in [0usize, 17, 299] {
            let direct: f64 = pixels
                .iter()
                .map(|&p| f64::from(data.frames[t * npx + p]))
                .sum::<f64>()
                / pixels.len() as f64;
            assert!((sums.intensity_vs_time[t] - direct).abs() < 1e-9);
        }
        assert_eq!(sums.intensity_vs_time.len(), 300);
        let img = saxs_2d(&sums.mean, &pixels, qmap);
        let p = pixels[100];
        let direct: f64 = (0..300)
            .map(|t| f64::from(data.frames[t * npx + p]))
            .sum::<f64>()
            / 300.0;
        assert!((f64::from(img[[p / 64, p % 64]]) - direct).abs() < 1e-5);
        assert_eq!(img[[0, 0]], 0.0, "masked corner");
        // The profile follows the generator's mean intensity per pixel. Only
        // the outer half is compared: there the speckle decorrelates within a
        // few frames, so 300 frames average it down to a few percent.
        let prof = saxs_1d(&img, qmap);
        // Empty static bins (fine rings without pixels at 64×64) are left out.
        let nonempty: std::collections::BTreeSet<u32> =
            qmap.sqmap.iter().copied().filter(|&s| s > 0).collect();
        assert_eq!(
            prof.iter().map(|&(s, _)| s).collect::<Vec<_>>(),
            nonempty.into_iter().collect::<Vec<_>>()
        );
        for &(s, v) in prof.iter().skip(prof.len() / 2).step_by(10) {
            let members: Vec<usize> = pixels
                .iter()
                .copied()
                .filter(|&p| qmap.sqmap[p] == s)
                .collect();
            let want = members
                .iter()
                .map(|&p| data.scene.mean_intensity(p, cfg.mean_count))
                .sum::<f64>()
                / members.len() as f64;
            assert!(
                (f64::from(v) - want).abs() < 0.1 * want,
                "bin {s}: {v} vs {want:.3}"
            );
        }
    }
}
