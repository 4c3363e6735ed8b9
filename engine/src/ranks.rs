//! MPI ranks sharing one analysis (`beamflow kernel … --mpi` under `mpiexec
//! -n K`, `mpirun -np K` or `srun -n K`). OpenMPI through rsmpi; a process
//! started without a launcher is a world of one.
//!
//! XPCS multi-tau: every rank reads the frames and correlates its share of
//! the valid pixels (`pipeline::share_of`); the per-pixel sums are gathered
//! to rank 0, which merges them (`PixelSums::merge`) and writes the results
//! exactly as one process would.

use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use beamflow_kernels::xpcs::pipeline::Share;
use beamflow_kernels::xpcs::{Delay, PixelSums};
use ndarray::Array2;

/// The MPI world this process belongs to (initialised once; finalised when
/// dropped).
pub struct Ranks {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl Ranks {
    pub fn init() -> anyhow::Result<Ranks> {
        let universe = mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("--mpi: MPI is already initialised in this process"))?;
        let world = universe.world();
        Ok(Ranks {
            _universe: universe,
            world,
        })
    }
}

/// One rank's sums as a flat buffer: g2, ip, if (delays × pixels, row
/// major), the pixel means, then the frame intensities.
fn flatten(s: &PixelSums) -> Vec<f64> {
    let mut v = Vec::with_capacity(3 * s.g2.len() + s.mean.len() + s.intensity_vs_time.len());
    for a in [&s.g2, &s.ip, &s.if_] {
        v.extend(a.iter().copied());
    }
    v.extend(&s.mean);
    v.extend(&s.intensity_vs_time);
    v
}

/// The inverse of [`flatten`], given what every rank shares.
fn unflatten(v: &[f64], delays: &[Delay], frames: u64, times: usize) -> Result<PixelSums, String> {
    let d = delays.len();
    let per_pixel = 3 * d + 1;
    let body = v
        .len()
        .checked_sub(times)
        .filter(|b| b % per_pixel == 0)
        .ok_or_else(|| format!("a rank sent {} values, not 3·{d}·P + P + {times}", v.len()))?;
    let p = body / per_pixel;
    let block = |i: usize| {
        Array2::from_shape_vec((d, p), v[i * d * p..(i + 1) * d * p].to_vec())
            .map_err(|e| e.to_string())
    };
    Ok(PixelSums {
        g2: block(0)?,
        ip: block(1)?,
        if_: block(2)?,
        mean: v[3 * d * p..3 * d * p + p].to_vec(),
        intensity_vs_time: v[3 * d * p + p..].to_vec(),
        delays: delays.to_vec(),
        frames,
    })
}

impl Share for Ranks {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn combine(&self, mine: PixelSums) -> Result<Option<PixelSums>, String> {
        let flat = flatten(&mine);
        let len = Count::try_from(flat.len())
            .map_err(|_| format!("{} values on one rank: use more ranks", flat.len()))?;
        let root = self.world.process_at_rank(0);
        if self.world.rank() != 0 {
            root.gather_into(&len);
            root.gather_varcount_into(&flat[..]);
            return Ok(None);
        }
        let mut counts = vec![0 as Count; self.ranks()];
        root.gather_into_root(&len, &mut counts[..]);
        let displs: Vec<Count> = counts
            .iter()
            .scan(0 as Count, |acc, &c| {
                let at = *acc;
                *acc += c;
                Some(at)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f64; total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(&flat[..], &mut parts);
        }
        let times = mine.intensity_vs_time.len();
        let shares = counts
            .iter()
            .zip(&displs)
            .map(|(&c, &at)| {
                let (at, c) = (at as usize, c as usize);
                unflatten(&all[at..at + c], &mine.delays, mine.frames, times)
            })
            .collect::<Result<Vec<_>, _>>()?;
        PixelSums::merge(shares).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_survives_the_flat_buffer() {
        let delays = beamflow_kernels::xpcs::delay_grid(40);
        let d = delays.len();
        let s = PixelSums {
            g2: Array2::from_shape_fn((d, 3), |(i, j)| (i * 10 + j) as f64),
            ip: Array2::from_shape_fn((d, 3), |(i, j)| (i + j) as f64 * 0.5),
            if_: Array2::from_shape_fn((d, 3), |(i, j)| (i * j) as f64),
            mean: vec![1.0, 2.0, 3.0],
            intensity_vs_time: (0..40).map(f64::from).collect(),
            delays: delays.clone(),
            frames: 40,
        };
        let back = unflatten(&flatten(&s), &delays, 40, 40).unwrap();
        assert_eq!((back.g2, back.ip, back.if_), (s.g2, s.ip, s.if_));
        assert_eq!(
            (back.mean, back.intensity_vs_time),
            (s.mean, s.intensity_vs_time)
        );
        assert!(unflatten(&[1.0; 7], &delays, 40, 40).is_err());
    }
}
