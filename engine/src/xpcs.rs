//! `beamflow kernel xpcs …` and `beamflow bench xpcs`: the XPCS kernels run
//! directly on files, outside any flow, with a progress bar.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beamflow_kernels::synthetic::xpcs::{write_dataset, DatasetFiles, SpeckleConfig};
use beamflow_kernels::xpcs::io::{open_frames, read_qmap, Frames};
use beamflow_kernels::xpcs::pipeline::{self, parse_selection, Mode, Options, PipelineError};
use beamflow_kernels::xpcs::Multitau;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

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

/// A progress bar for `what`, drawn on stderr unless `quiet` (JSON output).
pub(crate) fn bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:14} [{bar:30}] {pos}/{len} frames {elapsed} ({per_sec}, eta {eta})",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
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
fn analyse(opts: &Options, quiet: bool) -> anyhow::Result<pipeline::Outcome> {
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

pub fn run(cmd: XpcsCmd, json_out: bool) -> anyhow::Result<()> {
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
        let mut t = crate::cli::table(&["dq", "q (1/Å)", "Γ (1/s)", "β", "baseline", "resolved"]);
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

fn generate(
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

/// Peak resident memory since the last [`reset_peak_memory`], MB.
fn peak_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets the kernel's peak-RSS mark (Linux: write 5 to clear_refs).
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Frames per `Multitau::push` in the in-memory case (the pipeline's batch
/// at 512² pixels).
const PUSH_FRAMES: usize = 128;

/// What `beamflow bench xpcs` measures.
pub struct BenchXpcs {
    pub size: usize,
    pub frames: usize,
    pub twotime_frames: usize,
    /// Reuse (or create) the dataset here instead of a temporary directory.
    pub data: Option<PathBuf>,
}

/// Multi-tau kernel speed on frames in memory, the whole pipeline from the
/// file (multi-tau and two-time), and peak memory of each.
pub fn bench(b: &BenchXpcs, quiet: bool) -> anyhow::Result<Value> {
    let tmp;
    let dir = match &b.data {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let name = format!("B{}x{}_f{}", b.size, b.size, b.frames);
    let cfg = SpeckleConfig {
        size: b.size,
        frames: b.frames,
        ..Default::default()
    };
    let t = Instant::now();
    let existing = dir.join(&name).join(format!("{name}.h5"));
    // ground_truth.json is written last: its presence means a whole dataset.
    let files = if dir.join(&name).join("ground_truth.json").exists() {
        DatasetFiles {
            dir: dir.join(&name),
            raw: existing,
            metadata: dir.join(&name).join(format!("{name}_metadata.hdf")),
            qmap: dir.join(&name).join(format!("{name}_qmap.hdf")),
            truth: dir.join(&name).join("ground_truth.json"),
        }
    } else {
        generate(&cfg, &dir, &name, quiet)?
    };
    let generate_s = t.elapsed().as_secs_f64();

    // 1. The correlator alone: whole uint16 frames from memory.
    let src = open_frames(&files.raw).map_err(anyhow::Error::msg)?;
    let (n, h, w) = src.shape();
    let qmap = read_qmap(&files.qmap).map_err(anyhow::Error::msg)?;
    let pixels = qmap.valid_pixels();
    let frames = match src.read_frames(0, n).map_err(anyhow::Error::msg)? {
        Frames::U16(v) => v,
        _ => anyhow::bail!("{}: expected uint16 frames", files.raw.display()),
    };
    drop(src);
    reset_peak_memory();
    let t = Instant::now();
    let mut mt = Multitau::masked(n as u64, h * w, pixels.clone());
    let new_s = t.elapsed().as_secs_f64();
    for chunk in frames.chunks(PUSH_FRAMES * h * w) {
        mt.push(chunk).map_err(anyhow::Error::msg)?;
    }
    let push_s = t.elapsed().as_secs_f64() - new_s;
    mt.finish().map_err(anyhow::Error::msg)?;
    let kernel_s = t.elapsed().as_secs_f64();
    let kernel_mb = peak_memory_mb();
    drop(frames);
    let pf = (pixels.len() * n) as f64;

    // 2. End to end from the file, multi-tau.
    let out = tempfile::tempdir()?;
    let mut o = Options::new(&files.raw, &files.qmap, out.path(), Mode::Multitau);
    o.plots = false;
    o.overwrite = true;
    reset_peak_memory();
    let t = Instant::now();
    let mt_run = analyse(&o, quiet)?;
    let e2e_s = t.elapsed().as_secs_f64();
    let e2e_mb = peak_memory_mb();

    // 2b. The same through the torch backend (its best device here).
    let mut o = Options::new(&files.raw, &files.qmap, out.path(), Mode::Multitau);
    o.plots = false;
    o.overwrite = true;
    o.backend = pipeline::Backend::parse("torch").map_err(anyhow::Error::msg)?;
    let torch = match analyse(&o, quiet) {
        Ok(r) => json!({
            "device": r.summary.device,
            "seconds": r.summary.timings.total_s,
            "pixel_frames_per_s": pf / r.summary.timings.total_s,
            "diffusion_fit": r.summary.diffusion,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };

    // 3. Two-time over the first frames, every q bin.
    let tt_frames = b.twotime_frames.min(n);
    let mut o = Options::new(&files.raw, &files.qmap, out.path(), Mode::Twotime);
    o.plots = false;
    o.overwrite = true;
    o.end = Some(tt_frames);
    reset_peak_memory();
    let t = Instant::now();
    let tt_run = analyse(&o, quiet)?;
    let tt_s = t.elapsed().as_secs_f64();
    let tt_mb = peak_memory_mb();
    let truth: Value = std::fs::read_to_string(&files.truth)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let d_true = truth["diffusion"].as_f64();
    let d_fit = mt_run.summary.diffusion;
    Ok(json!({
        "bench": "xpcs",
        "detector": [h, w],
        "frames": n,
        "pixels": pixels.len(),
        "threads": rayon::current_num_threads(),
        "generate_s": generate_s,
        "multitau_kernel": {
            "seconds": kernel_s,
            "push_frames": PUSH_FRAMES,
            "new_s": new_s,
            "push_s": push_s,
            "finish_s": kernel_s - push_s - new_s,
            "pixel_frames_per_s": pf / kernel_s,
            "push_pixel_frames_per_s": pf / push_s,
            "peak_memory_mb": kernel_mb,
        },
        "multitau_end_to_end": {
            "seconds": e2e_s,
            "pixel_frames_per_s": pf / e2e_s,
            "read_correlate_s": mt_run.summary.timings.read_correlate_s,
            "write_s": mt_run.summary.timings.write_s,
            "peak_memory_mb": e2e_mb,
            "diffusion_fit": d_fit,
            "diffusion_true": d_true,
            "diffusion_rel_err": d_fit.zip(d_true).map(|(f, t)| (f - t) / t),
            "beta_fit": mt_run.summary.beta,
        },
        "multitau_torch_end_to_end": torch,
        "twotime": {
            "frames": tt_frames,
            "bins": tt_run.summary.twotime_bins.len(),
            "seconds": tt_s,
            "pixel_frames_per_s": (pixels.len() * tt_frames) as f64 / tt_s,
            "peak_memory_mb": tt_mb,
        },
    }))
}
