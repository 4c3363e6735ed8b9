//! The multi-tau delay grid: 8 delays at level 0, then 4 per octave.

/// One delay: `tau = k · 2^level` frames, measured between level-`level`
/// frames (sums of 2^level raw frames) that are `k` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    pub tau: u64,
    pub level: u32,
    pub k: u32,
}

/// The delays for `n` frames, in increasing order: 1..=8 at level 0, then
/// 5·2^L..=8·2^L at level L ≥ 1 while `k·2^L < (n / 2^L)·2^L`. Identical to
/// the reference's grid (`/xpcs/multitau/delay_list`).
pub fn delay_grid(n: u64) -> Vec<Delay> {
    let mut out: Vec<Delay> = (1..=4)
        .map(|k| Delay {
            tau: k,
            level: 0,
            k: k as u32,
        })
        .collect();
    for level in 0..=60u32 {
        let s = 1u64 << level;
        let mut stopped = false;
        for k in 5..=8u64 {
            if k * s >= (n / s) * s {
                stopped = true;
                break;
            }
            out.push(Delay {
                tau: k * s,
                level,
                k: k as u32,
            });
        }
        if stopped {
            break;
        }
    }
    out
}

/// Number of levels the grid needs (highest level + 1).
pub fn levels(grid: &[Delay]) -> usize {
    grid.iter().map(|d| d.level as usize + 1).max().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taus(n: u64) -> Vec<u64> {
        delay_grid(n).iter().map(|d| d.tau).collect()
    }

    #[test]
    fn grid_matches_the_reference_examples() {
        // reference/xpcs.md §1.1, checked against boost_corr's gen_tau_bin.
        for (n, count, max, nlevels) in [
            (500, 30, 384, 7),
            (1000, 34, 768, 8),
            (5000, 44, 4096, 10),
            (10000, 48, 8192, 11),
            (100000, 61, 81920, 15),
        ] {
            let g = delay_grid(n);
            assert_eq!(g.len(), count, "n = {n}");
            assert_eq!(g.last().unwrap().tau, max, "n = {n}");
            assert_eq!(levels(&g), nlevels, "n = {n}");
        }
        let t = taus(5000);
        assert_eq!(
            &t[..16],
            &[1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]
        );
        assert_eq!(&t[t.len() - 5..], &[2048, 2560, 3072, 3584, 4096]);
        for d in delay_grid(5000) {
            assert_eq!(d.tau, u64::from(d.k) << d.level);
        }
    }
}
