//! `beamflow kernel xpcs …` and `beamflow bench xpcs`: the XPCS kernels run
//! directly on files, outside any flow, with a progress bar.

use crate::cli::render::{bar, Out};
use std::path::{Path, PathBuf};

use beamflow_kernels::synthetic::xpcs::{write_dataset, DatasetFiles, SpeckleConfig};
use beamflow_kernels::xpcs::pipeline::{self, parse_selection, Mode, Options, PipelineError};
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
    Synthetic(SyntheticArgs),
}

#[derive(Args)]
pub struct AnalysisArgs {
    /// Raw frames: HDF5 (/entry/data/data) or IMM.
    #[arg(long, short = 'r')]
    raw: PathBuf,
    /// Partition file (/qmap group).
    #[arg(long, short = 'q')]
    qmap: PathBuf,
    /// Output directory.
    #[arg(long, short = 'o', default_value = ".")]
    out: PathBuf,
    /// Metadata file (default: *_metadata.hdf next to the raw file).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// First frame (inclusive).
    #[arg(long, short = 'b', default_value_t = 0)]
    begin: usize,
    /// Last frame (exclusive; default: all).
    #[arg(long, short = 'e')]
    end: Option<usize>,
    /// Take every STRIDE-th frame.
    #[arg(long, short = 'f', default_value_t = 1)]
    stride: usize,
    /// Average AVG consecutive (strided) frames.
    #[arg(long, short = 'a', default_value_t = 1)]
    avg: usize,
    /// Two-time q bins, e.g. "1,2,5-7" (default: all).
    #[arg(long, short = 'd')]
    dq: Option<String>,
    /// Memory for the two-time frame store, GB.
    #[arg(long, default_value_t = 4.0)]
    max_memory: f64,
    /// Replace an existing results file instead of numbering a new one.
    #[arg(long, short = 'w')]
    overwrite: bool,
    /// Skip the PNG figures.
    #[arg(long)]
    no_plots: bool,
    /// Divide each frame by its mean before multi-tau (the reference's -nf 1).
    #[arg(long = "normalize-frame", visible_alias = "nf")]
    normalize_frame: bool,
    /// Multi-tau backend: cpu (native), torch (libtorch, best device), or
    /// torch:DEVICE (cpu, cuda, cuda:N); without that device, torch runs on
    /// the CPU and says so.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Share the multi-tau pixels among the MPI ranks this process is one
    /// of (`mpiexec -n K beamflow kernel xpcs multitau --mpi …`); rank 0
    /// writes the results, identical to one process's.
    #[arg(long)]
    mpi: bool,
}

#[derive(Args)]
pub struct SyntheticArgs {
    /// Directory to write NAME/ into.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value = "S001_synthetic")]
    name: String,
    /// Detector side, pixels.
    #[arg(long, default_value_t = 512)]
    size: usize,
    #[arg(long, default_value_t = 2000)]
    frames: usize,
    /// Seconds between frames.
    #[arg(long, default_value_t = 1e-3)]
    frame_time: f64,
    /// Speckle modes (contrast β = 1/modes).
    #[arg(long, default_value_t = 2)]
    modes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn options(a: &AnalysisArgs, mode: Mode) -> anyhow::Result<Options> {
    let mut o = Options::new(&a.raw, &a.qmap, &a.out, mode);
    o.meta = a.meta.clone();
    o.begin = a.begin;
    o.end = a.end;
    o.stride = a.stride;
    o.avg = a.avg;
    o.overwrite = a.overwrite;
    o.plots = !a.no_plots;
    o.normalize_frame = a.normalize_frame;
    o.backend = pipeline::Backend::parse(&a.backend).map_err(anyhow::Error::msg)?;
    o.max_memory = (a.max_memory * (1u64 << 30) as f64) as usize;
    if let Some(d) = &a.dq {
        o.dq_selection = Some(parse_selection(d).map_err(anyhow::Error::msg)?);
    }
    Ok(o)
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
    let json_out = out.is_json();
    let (args, mode) = match cmd {
        XpcsCmd::Synthetic(s) => return synthetic(&s, json_out),
        XpcsCmd::Multitau(a) => (a, Mode::Multitau),
        XpcsCmd::Twotime(a) => (a, Mode::Twotime),
        XpcsCmd::Both(a) => (a, Mode::Both),
    };
    let opts = options(&args, mode)?;
    let out = if args.mpi {
        let ranks = crate::ranks::Ranks::init()?;
        match analyse_shared(&opts, json_out, Some(&ranks))? {
            Some(out) => out,
            // Another rank writes the results.
            None => return Ok(()),
        }
    } else {
        analyse(&opts, json_out)?
    };
    let s = &out.summary;
    if let Some(why) = &s.device_note {
        eprintln!("note: {why}");
    }
    if json_out {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    println!(
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
        let mut t =
            crate::cli::render::table(&["dq", "q (1/Å)", "Γ (1/s)", "β", "baseline", "resolved"]);
        for f in &s.fits {
            t.add_row(vec![
                f.dq.to_string(),
                format!("{:.5}", f.q),
                format!("{:.4e}", f.gamma),
                format!("{:.4}", f.beta),
                format!("{:.4}", f.baseline),
                if f.resolved { "yes" } else { "no" }.to_string(),
            ]);
        }
        println!("{t}");
        if let (Some(d), Some(b)) = (s.diffusion, s.beta) {
            println!("Γ = D q² over the resolved bins: D = {d:.4e} Å²/s, mean β = {b:.4}");
        }
    }
    if !s.twotime_bins.is_empty() {
        println!("two-time maps for q bins {:?}", s.twotime_bins);
    }
    println!("results: {}", s.results.display());
    println!("summary: {}", out.summary_path.display());
    for p in &s.plots {
        println!("figure:  {}", p.display());
    }
    Ok(())
}

fn synthetic(a: &SyntheticArgs, json_out: bool) -> anyhow::Result<()> {
    let cfg = SpeckleConfig {
        size: a.size,
        frames: a.frames,
        dt: a.frame_time,
        modes: a.modes.max(1),
        seed: a.seed,
        ..Default::default()
    };
    let files = generate(&cfg, &a.dir, &a.name, json_out)?;
    if json_out {
        println!(
            "{}",
            json!({"dir": files.dir, "raw": files.raw, "qmap": files.qmap, "metadata": files.metadata, "truth": files.truth})
        );
    } else {
        println!("raw:      {}", files.raw.display());
        println!("qmap:     {}", files.qmap.display());
        println!("metadata: {}", files.metadata.display());
        println!("truth:    {}", files.truth.display());
    }
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
