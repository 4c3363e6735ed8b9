//! `beamflow kernel step NAME`: one flow kernel outside the pilot, with its
//! parameters from a file. The pilot starts it through the site's launcher
//! (`srun`, `mpiexec`, `mpirun`) for a step on several nodes, one process
//! per rank, with `--mpi`; rank 0 writes the step's outputs.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use beamflow_kernels::ranks::{Collective, Solo};
use beamflow_kernels::KernelContext;

#[derive(Args)]
pub struct StepArgs {
    /// The kernel, as flows name it (`beamflow kernel list`).
    pub name: String,
    /// The step's parameters: a JSON object.
    #[arg(long)]
    pub params: PathBuf,
    /// The attempt's directory, where the kernel writes its files.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Cores for this process (default: all usable).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run as one of the MPI ranks this was started as.
    #[arg(long)]
    pub mpi: bool,
    /// With --mpi: the ranks the launcher was asked for. A launcher that
    /// does not wire MPI up (srun without --mpi=pmix, another MPI's
    /// mpiexec) starts worlds of one, each of which would do the whole run.
    #[arg(long, requires = "mpi")]
    pub ranks: Option<usize>,
    /// Where rank 0 writes the outputs (default: `$BEAMFLOW_OUTPUTS`, else
    /// standard output).
    #[arg(long, env = "BEAMFLOW_OUTPUTS")]
    pub outputs: Option<PathBuf>,
}

/// Runs the kernel on this (blocking) thread: MPI is used from the thread
/// that initialised it.
pub fn run(a: StepArgs) -> anyhow::Result<()> {
    let kernel = beamflow_kernels::find(&a.name).ok_or_else(|| {
        let known: Vec<&str> = beamflow_kernels::kernels()
            .iter()
            .map(|k| k.name())
            .collect();
        anyhow::anyhow!("unknown kernel `{}` (known: {})", a.name, known.join(", "))
    })?;
    let text = std::fs::read_to_string(&a.params)
        .with_context(|| format!("{}: cannot read the parameters", a.params.display()))?;
    let params: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", a.params.display()))?;
    let ranks = if a.mpi {
        Some(crate::ranks::Ranks::init()?)
    } else {
        None
    };
    // Without --threads, ranks on one node share its cores.
    let threads = match (a.threads, &ranks) {
        (Some(t), _) => t,
        (None, Some(r)) => r.threads_each(),
        (None, None) => crate::host::cpus() as usize,
    };
    // Kernels sharing a run among ranks use the global pool: one per rank.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .map_err(|e| anyhow::anyhow!("thread pool: {e}"))?;
    let ctx = KernelContext::new(
        a.work_dir.clone(),
        threads.max(1),
        crate::host::gpus(),
        Arc::new(AtomicBool::new(false)),
    );
    let world: &dyn Collective = match &ranks {
        Some(r) => r,
        None => &Solo,
    };
    if let Some(want) = a.ranks.filter(|&w| w != world.size()) {
        anyhow::bail!(
            "started as one of {want} ranks but MPI sees {}: the launcher did not connect them (srun needs --mpi=pmix for OpenMPI; a site's mpiexec must belong to the MPI beamflow was built with)",
            world.size()
        );
    }
    let out = match kernel.run_shared(&params, &ctx, world) {
        Ok(out) => out,
        Err(e) => {
            let msg = format!("kernel `{}` (rank {}): {e}", a.name, world.rank());
            // The other ranks would wait for this one in their next
            // collective until the step's timeout: end them all now.
            if let Some(r) = ranks.as_ref().filter(|r| r.size() > 1) {
                eprintln!("error: {msg}");
                r.abort(1);
            }
            anyhow::bail!(msg);
        }
    };
    if world.rank() == 0 {
        let text = serde_json::to_string_pretty(&out)?;
        match &a.outputs {
            Some(p) => std::fs::write(p, text)
                .with_context(|| format!("{}: cannot write the outputs", p.display()))?,
            None => println!("{text}"),
        }
    }
    Ok(())
}
