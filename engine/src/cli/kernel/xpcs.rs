//! `beamflow kernel xpcs …` and `beamflow bench xpcs`: the XPCS kernels run
//! directly on files, outside any flow, with a progress bar.

use crate::cli::render::{bar, table, Out};
use crate::util::sig;
use std::path::{Path, PathBuf};

use beamflow_kernels::synthetic::xpcs::{write_dataset, DatasetFiles, SpeckleConfig};
use beamflow_kernels::xpcs::params::{AnalysisParams, SyntheticParams};
use beamflow_kernels::xpcs::pipeline::{self, Mode, Options, PipelineError};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand)]
pub enum XpcsCmd {
    /// Multi-tau g2 per q: results HDF5 (viewer layout), fits, plots.
    Multitau(AnalysisArgs),
    /// Two-time C(t1, t2) per q bin.
    Twotime(AnalysisArgs),
    /// Multi-tau and two-time in one results file.
    Both(AnalysisArgs),
    /// Write a synthetic measurement with known D and β.
    Synthetic(SyntheticParams),
}

/// An analysis: the parameters an `xpcs.multitau` step takes, and `--mpi`.
#[derive(Args)]
pub struct AnalysisArgs {
    #[command(flatten)]
    params: AnalysisParams,
    /// Share the multi-tau pixels among the MPI ranks this process is one
    /// of (`mpiexec -n K beamflow kernel xpcs multitau --mpi …`); rank 0
    /// writes the results, identical to one process's.
    #[arg(long)]
    mpi: bool,
}

/// Runs one analysis with a progress bar; returns the summary as JSON.
pub(crate) fn analyse(opts: &Options, quiet: bool) -> anyhow::Result<pipeline::Outcome> {
    Ok(analyse_shared(opts, quiet, None)?.expect("a lone process writes the results"))
}

/// [`analyse`] as one of the processes of `share`: rank 0 gets the outcome
/// (and shows the progress), the others `None`.
fn analyse_shared(
    opts: &Options,
    quiet: bool,
    share: Option<&dyn beamflow_kernels::ranks::Collective>,
) -> anyhow::Result<Option<pipeline::Outcome>> {
    let leader = share.is_none_or(|s| s.rank() == 0);
    let b = bar(0, "", quiet || !leader);
    let res = pipeline::run_shared(
        opts,
        &mut |p| {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(p.stage);
            true
        },
        share,
    );
    b.finish_and_clear();
    match res {
        Ok(o) => Ok(o),
        Err(PipelineError::Cancelled) => anyhow::bail!("cancelled"),
        Err(PipelineError::Failed(e)) => anyhow::bail!(e),
    }
}

pub fn run(cmd: XpcsCmd, out: Out) -> anyhow::Result<()> {
    let (args, mode) = match cmd {
        XpcsCmd::Synthetic(s) => return synthetic(&s, out),
        XpcsCmd::Multitau(a) => (a, Mode::Multitau),
        XpcsCmd::Twotime(a) => (a, Mode::Twotime),
        XpcsCmd::Both(a) => (a, Mode::Both),
    };
    let opts = args.params.options(mode, &crate::host::gpus())?;
    let outcome = if args.mpi {
        let ranks = crate::ranks::Ranks::init()?;
        match analyse_shared(&opts, out.quiet(), Some(&ranks))? {
            Some(o) => o,
            // Another rank writes the results.
            None => return Ok(()),
        }
    } else {
        analyse(&opts, out.quiet())?
    };
    let s = &outcome.summary;
    for why in s.device_note.iter().chain(&s.frames_note) {
        eprintln!("note: {why}");
    }
    out.show(s, |s| {
        let mut text = format!(
            "{} frames of {}x{} ({} pixels) on {}, t0 = {} s: {:.1} M pixel-frames/s, {:.2} s in all",
            s.frames,
            s.detector[0],
            s.detector[1],
            s.pixels,
            s.device,
            s.t0,
            s.pixel_frames_per_s / 1e6,
            s.timings.total_s
        );
        if !s.fits.is_empty() {
            let mut t = table(&["dq", "q (1/Å)", "Γ (1/s)", "β", "baseline", "resolved"]);
            for f in &s.fits {
                t.add_row(vec![
                    f.dq.to_string(),
                    sig(f.q, 4),
                    sig(f.gamma, 4),
                    sig(f.beta, 4),
                    sig(f.baseline, 4),
                    if f.resolved { "yes" } else { "no" }.to_string(),
                ]);
            }
            text += &format!("\n{t}");
            if let (Some(d), Some(b)) = (s.diffusion, s.beta) {
                text += &format!(
                    "\nΓ = D q² over the resolved bins: D = {d:.4e} Å²/s, mean β = {b:.4}"
                );
            }
        }
        if !s.twotime_bins.is_empty() {
            text += &format!("\ntwo-time maps for q bins {:?}", s.twotime_bins);
        }
        text += &format!(
            "\nresults: {}\nsummary: {}",
            s.results.display(),
            outcome.summary_path.display()
        );
        for p in &s.plots {
            text += &format!("\nfigure:  {}", p.display());
        }
        text
    });
    Ok(())
}

fn synthetic(a: &SyntheticParams, out: Out) -> anyhow::Result<()> {
    let cfg = a.config()?;
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let files = generate(&cfg, &dir, &a.name, out.quiet())?;
    let v = json!({"dir": files.dir, "raw": files.raw, "qmap": files.qmap, "metadata": files.metadata, "truth": files.truth});
    out.show(&v, |_| {
        format!(
            "raw:      {}\nqmap:     {}\nmetadata: {}\ntruth:    {}",
            files.raw.display(),
            files.qmap.display(),
            files.metadata.display(),
            files.truth.display()
        )
    });
    Ok(())
}

pub(crate) fn generate(
    cfg: &SpeckleConfig,
    dir: &Path,
    name: &str,
    quiet: bool,
) -> anyhow::Result<DatasetFiles> {
    let b = bar(cfg.frames as u64, "generating", quiet);
    let files =
        write_dataset(cfg, dir, name, |n| b.set_position(n as u64)).map_err(anyhow::Error::msg)?;
    b.finish_and_clear();
    Ok(files)
}
