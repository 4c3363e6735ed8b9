//! `beamflow kernel …`: the native kernels on files, outside any flow, and
//! `kernel step`, which runs one flow step's kernel as the ranks of a step
//! on several nodes do.

pub mod braggnn;
pub mod hedm;
pub mod ptycho;
pub mod step;
pub mod xpcs;

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::render::{table, Out};
use super::Ctx;

// Parsed once per process: the size of the XPCS arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum KernelCmd {
    /// The kernels flows can use, with their parameters and outputs.
    List,
    /// XPCS: multi-tau and two-time correlation, synthetic series.
    #[command(subcommand)]
    Xpcs(xpcs::XpcsCmd),
    /// HEDM Bragg peaks: search and pseudo-Voigt fit, synthetic frames.
    #[command(subcommand)]
    Hedm(hedm::HedmCmd),
    /// Ptychography: reconstruction (ePIE, rPIE, DM, LSQ-ML), synthetic datasets.
    #[command(subcommand)]
    Ptycho(ptycho::PtychoCmd),
    /// BraggNN: synthetic patches, training, export, inference on patches and frames.
    #[command(subcommand)]
    Braggnn(braggnn::BraggnnCmd),
    /// One flow kernel with its parameters from a file, as the ranks of a
    /// step on several nodes run it (`--mpi` under srun/mpiexec/mpirun).
    Step(step::StepArgs),
}

/// `kernel list --json`: one kernel.
#[derive(Serialize)]
struct Listed {
    name: &'static str,
    summary: &'static str,
    params: &'static [&'static str],
    outputs: &'static [&'static str],
}

impl KernelCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let out = cx.out;
        match self {
            KernelCmd::List => list(out)?,
            KernelCmd::Xpcs(c) => blocking(move || xpcs::run(c, out)).await??,
            KernelCmd::Hedm(c) => blocking(move || hedm::run(c, out)).await??,
            KernelCmd::Ptycho(c) => blocking(move || ptycho::run(c, out)).await??,
            KernelCmd::Braggnn(c) => blocking(move || braggnn::run(c, out)).await??,
            KernelCmd::Step(a) => blocking(move || step::run(a)).await??,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Kernels compute on their own threads, off the runtime.
async fn blocking(
    f: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<anyhow::Result<()>> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn list(out: Out) -> anyhow::Result<()> {
    let ks: Vec<Listed> = beamflow_kernels::kernels()
        .iter()
        .map(|k| Listed {
            name: k.name(),
            summary: k.summary(),
            params: k.params(),
            outputs: k.outputs(),
        })
        .collect();
    out.show(&ks, |ks| {
        let mut t = table(&["kernel", "params", "outputs", "summary"]);
        for k in ks {
            t.add_row(vec![
                k.name.to_string(),
                k.params.join(", "),
                k.outputs.join(", "),
                k.summary.to_string(),
            ]);
        }
        t
    });
    Ok(())
}
