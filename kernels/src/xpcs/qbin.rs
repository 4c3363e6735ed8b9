//! From per-pixel sums to g2 per dynamic q bin, with the reference's symmetric
//! normalisation (reference/xpcs.md §1.4): G2, IP and IF are averaged over
//! each static bin, g2_s = ⟨G2⟩/(⟨IP⟩⟨IF⟩), and a dynamic bin's g2 is the
//! plain mean of g2_s over its static bins. The error is the standard error
//! of per-pixel g2 in the dynamic bin (ddof = 1).

use ndarray::Array2;

use super::multitau::PixelSums;

/// Which pixels are used and which q bins they belong to (0 = none).
#[derive(Clone, Debug)]
pub struct QMap {
    pub width: usize,
    pub height: usize,
    pub mask: Vec<u8>,
    pub sqmap: Vec<u32>,
    pub dqmap: Vec<u32>,
    /// Mean q of each static bin (index s − 1), in Å⁻¹.
    pub sq_values: Vec<f64>,
    /// Mean q of each dynamic bin (index d − 1), in Å⁻¹.
    pub dq_values: Vec<f64>,
}

impl QMap {
    /// Detector indices of the pixels that are correlated (mask = 1).
    pub fn valid_pixels(&self) -> Vec<usize> {
        (0..self.mask.len())
            .filter(|&i| self.mask[i] == 1)
            .collect()
    }
    pub fn n_sq(&self) -> usize {
        self.sqmap.iter().copied().max().unwrap_or(0) as usize
    }
    pub fn n_dq(&self) -> usize {
        self.dqmap.iter().copied().max().unwrap_or(0) as usize
    }
}

/// g2 per dynamic bin.
pub struct G2Result {
    /// Delays in frames.
    pub tau: Vec<u64>,
    /// Shape (delays, dynamic bins).
    pub g2: Array2<f32>,
    pub g2_err: Array2<f32>,
}

/// A zero denominator is replaced by this, as in the reference.
const ZERO_DENOMINATOR: f64 = 1e8;

/// Normalises `sums`, whose columns are the detector pixels `pixels`.
pub fn normalize(sums: &PixelSums, qmap: &QMap, pixels: &[usize]) -> G2Result {
    let t = sums.delays.len();
    let (n_sq, n_dq) = (qmap.n_sq(), qmap.n_dq());
    // Static-bin sizes over the whole detector, exactly as the reference counts them.
    let mut count_s = vec![0f64; n_sq + 1];
    for &s in &qmap.sqmap {
        count_s[s as usize] += 1.0;
    }
    // Static bins present in each dynamic bin, and pixels per dynamic bin.
    let mut sq_in_dq = vec![vec![false; n_sq + 1]; n_dq + 1];
    let mut n_pix_d = vec![0usize; n_dq + 1];
    for &px in pixels {
        let (s, d) = (qmap.sqmap[px] as usize, qmap.dqmap[px] as usize);
        if s > 0 && d > 0 {
            sq_in_dq[d][s] = true;
            n_pix_d[d] += 1;
        }
    }
    let mut g2 = Array2::<f32>::zeros((t, n_dq));
    let mut err = Array2::<f32>::zeros((t, n_dq));
    for tid in 0..t {
        let mut acc = vec![[0f64; 3]; n_sq + 1];
        // Per-pixel g2 moments per dynamic bin for the standard error.
        let mut mom = vec![[0f64; 2]; n_dq + 1];
        for (col, &px) in pixels.iter().enumerate() {
            let (g, i_p, i_f) = (
                sums.g2[[tid, col]],
                sums.ip[[tid, col]],
                sums.if_[[tid, col]],
            );
            let s = qmap.sqmap[px] as usize;
            if s > 0 {
                acc[s][0] += g;
                acc[s][1] += i_p;
                acc[s][2] += i_f;
            }
            let d = qmap.dqmap[px] as usize;
            if d > 0 {
                let den = i_p * i_f;
                let gp = g / if den == 0.0 { ZERO_DENOMINATOR } else { den };
                mom[d][0] += gp;
                mom[d][1] += gp * gp;
            }
        }
        let g2_s: Vec<f64> = (0..=n_sq)
            .map(|s| {
                if s == 0 || count_s[s] == 0.0 {
                    return 0.0;
                }
                let [g, i_p, i_f] = acc[s].map(|x| x / count_s[s]);
                let den = i_p * i_f;
                g / if den == 0.0 { ZERO_DENOMINATOR } else { den }
            })
            .collect();
        for d in 1..=n_dq {
            let members: Vec<f64> = (1..=n_sq)
                .filter(|&s| sq_in_dq[d][s])
                .map(|s| g2_s[s])
                .collect();
            if members.is_empty() {
                continue;
            }
            g2[[tid, d - 1]] = (members.iter().sum::<f64>() / members.len() as f64) as f32;
            let n = n_pix_d[d] as f64;
            if n > 1.0 {
                let mean = mom[d][0] / n;
                let var = ((mom[d][1] - n * mean * mean) / (n - 1.0)).max(0.0);
                err[[tid, d - 1]] = (var.sqrt() / n.sqrt()) as f32;
            }
        }
    }
    G2Result {
        tau: sums.delays.iter().map(|d| d.tau).collect(),
        g2,
        g2_err: err,
    }
}
