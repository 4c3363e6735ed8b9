//! `beamflow bench xpcs`: the multi-tau kernel on frames in memory, the
//! whole pipeline from the file (multi-tau native and torch, two-time), and
//! the peak memory of each, on a synthetic series with known dynamics.

use crate::cli::kernel::xpcs::{analyse, generate};
use beamflow_kernels::synthetic::xpcs::{DatasetFiles, SpeckleConfig};
use beamflow_kernels::xpcs::io::{open_frames, read_qmap, Frames};
use beamflow_kernels::xpcs::pipeline::{self, Mode, Options};
use beamflow_kernels::xpcs::Multitau;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

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
#[derive(clap::Args)]
pub struct BenchXpcs {
    /// The detector's side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Frames in the series.
    #[arg(long, default_value_t = 2000)]
    pub frames: usize,
    /// Frames for the two-time case.
    #[arg(long, default_value_t = 1000)]
    pub twotime_frames: usize,
    /// Reuse (or create) the dataset here instead of a temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Multi-tau kernel speed on frames in memory, the whole pipeline from the
/// file (multi-tau and two-time), and peak memory of each.
impl BenchXpcs {
    pub fn run(&self, quiet: bool) -> anyhow::Result<Value> {
        bench(self, quiet)
    }
}

fn bench(b: &BenchXpcs, quiet: bool) -> anyhow::Result<Value> {
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
