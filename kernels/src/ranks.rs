//! Processes that run one kernel together — MPI ranks under `mpiexec -n K`,
//! `mpirun -np K` or `srun -n K` — and the few collective operations the
//! kernels need from them. The kernels do not depend on MPI: the engine
//! implements [`Collective`] over its MPI world (`beamflow::ranks::Ranks`),
//! and [`Solo`] is a world of one.
//!
//! Every rank must make the same calls in the same order (they are
//! collective): a rank that skips one leaves the others waiting.

/// The collective operations over a fixed set of processes (ranks
/// `0..size()`). Not `Send`/`Sync`: MPI is initialised for one thread
/// (`MPI_THREAD_SINGLE`), so a world is used from the thread that made it.
pub trait Collective {
    /// This process's place, `0..size()`; rank 0 writes results.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over all ranks, in place. Every rank gets the
    /// same bits (the sum is formed once and sent to everyone), so that
    /// ranks applying it stay identical. All ranks pass the same length.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<(), String>;
    /// Every rank's `mine` (lengths may differ) concatenated in rank order,
    /// on every rank.
    fn all_gather_f64(&self, mine: &[f64]) -> Result<Vec<f64>, String>;
    /// Every rank's `mine` (lengths may differ), in rank order, on rank 0;
    /// `None` on the other ranks.
    fn gather_f64(&self, mine: &[f64]) -> Result<Option<Vec<Vec<f64>>>, String>;
}

/// A world of one process: every collective returns what it is given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _buf: &mut [f32]) -> Result<(), String> {
        Ok(())
    }

    fn all_gather_f64(&self, mine: &[f64]) -> Result<Vec<f64>, String> {
        Ok(mine.to_vec())
    }

    fn gather_f64(&self, mine: &[f64]) -> Result<Option<Vec<Vec<f64>>>, String> {
        Ok(Some(vec![mine.to_vec()]))
    }
}

/// The part of `n` items (indices) rank `r` of `k` takes: consecutive
/// blocks, in rank order, whose sizes differ by at most one.
pub fn share_of(n: usize, r: usize, k: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / k, n % k);
    let start = r * base + r.min(extra);
    start..start + base + usize::from(r < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_items_once_in_order() {
        for (n, k) in [(10, 3), (3, 5), (100, 1), (7, 7), (0, 2)] {
            let all: Vec<usize> = (0..k).flat_map(|r| share_of(n, r, k)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} items, {k} ranks");
            let sizes: Vec<usize> = (0..k).map(|r| share_of(n, r, k).len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_world_of_one_hands_back_what_it_gets() {
        let s = Solo;
        assert_eq!((s.rank(), s.size()), (0, 1));
        let mut b = [1.5f32, -2.0];
        s.sum_f32(&mut b).unwrap();
        assert_eq!(b, [1.5, -2.0]);
        assert_eq!(s.all_gather_f64(&[3.0]).unwrap(), vec![3.0]);
        assert_eq!(
            s.gather_f64(&[4.0, 5.0]).unwrap(),
            Some(vec![vec![4.0, 5.0]])
        );
    }
}
