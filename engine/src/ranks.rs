//! MPI ranks sharing one analysis (`beamflow kernel … --mpi` under `mpiexec
//! -n K`, `mpirun -np K` or `srun -n K`). OpenMPI through rsmpi; a process
//! started without a launcher is a world of one.
//!
//! Only the MPI primitives live here: [`Ranks`] implements the kernels'
//! [`Collective`], and the kernels decide what to share (XPCS multi-tau:
//! per-pixel sums gathered to rank 0; BraggNN training: gradients summed
//! every step, validation errors gathered every epoch).

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use beamflow_kernels::ranks::Collective;

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

    /// Threads for each rank's compute when the user gave none: the cores
    /// this process may use, shared among the ranks on this node that may
    /// use the same ones — one each where the launcher bound every rank to
    /// its own cores (OpenMPI's default for a few ranks, `srun
    /// --cpu-bind`), the node's cores split evenly where it bound none; at
    /// least one. Collective: every rank calls it.
    pub fn threads_each(&self) -> usize {
        let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
        let node = self.world.split_shared(self.world.rank());
        let mine = affinity();
        let mut all = vec![0u64; mine.len() * node.size() as usize];
        node.all_gather_into(&mine[..], &mut all[..]);
        let sharing = all.chunks(mine.len()).filter(|m| *m == mine).count();
        (usable / sharing.max(1)).max(1)
    }

    /// Ends every rank of the job (after an error on this one, which the
    /// others would otherwise wait for in their next collective).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The CPUs this process may run on, as a bit set (all zeros where that
/// cannot be read: every rank then counts as sharing with all the others).
fn affinity() -> Vec<u64> {
    const WORDS: usize = 1024 / 64;
    let mut bits = vec![0u64; WORDS];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity
        // fills it for this thread, and CPU_ISSET reads it in bounds.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                for cpu in 0..(WORDS * 64).min(libc::CPU_SETSIZE as usize) {
                    if libc::CPU_ISSET(cpu, &set) {
                        bits[cpu / 64] |= 1 << (cpu % 64);
                    }
                }
            }
        }
    }
    bits
}

/// `n` as an MPI count.
fn count(n: usize) -> Result<Count, String> {
    Count::try_from(n).map_err(|_| format!("{n} values on one rank: use more ranks"))
}

/// Where each rank's part starts in the concatenation of parts of `counts`.
fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0 as Count, |acc, &c| {
            let at = *acc;
            *acc += c;
            Some(at)
        })
        .collect()
}

impl Collective for Ranks {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// Reduced on rank 0, then broadcast: every rank gets rank 0's bits
    /// (an all-reduce may sum in a different order on each rank).
    fn sum_f32(&self, buf: &mut [f32]) -> Result<(), String> {
        count(buf.len())?;
        let root = self.world.process_at_rank(0);
        if self.world.rank() == 0 {
            let mine = buf.to_vec();
            root.reduce_into_root(&mine[..], buf, SystemOperation::sum());
        } else {
            root.reduce_into(&buf[..], SystemOperation::sum());
        }
        root.broadcast_into(buf);
        Ok(())
    }

    fn all_gather_f64(&self, mine: &[f64]) -> Result<Vec<f64>, String> {
        let len = count(mine.len())?;
        let mut counts = vec![0 as Count; self.size()];
        self.world.all_gather_into(&len, &mut counts[..]);
        let displs = displacements(&counts);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f64; total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut parts);
        }
        Ok(all)
    }

    fn gather_f64(&self, mine: &[f64]) -> Result<Option<Vec<Vec<f64>>>, String> {
        let len = count(mine.len())?;
        let root = self.world.process_at_rank(0);
        if self.world.rank() != 0 {
            root.gather_into(&len);
            root.gather_varcount_into(mine);
            return Ok(None);
        }
        let mut counts = vec![0 as Count; self.size()];
        root.gather_into_root(&len, &mut counts[..]);
        let displs = displacements(&counts);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f64; total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(mine, &mut parts);
        }
        Ok(Some(
            counts
                .iter()
                .zip(&displs)
                .map(|(&c, &at)| all[at as usize..(at + c) as usize].to_vec())
                .collect(),
        ))
    }
}
