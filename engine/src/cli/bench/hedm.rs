//! `beamflow bench hedm`: peak search and pseudo-Voigt fit on synthetic
//! frames, their speed and how far the fitted centres are from the truth.

use crate::cli::kernel::hedm::search;
use beamflow_kernels::hedm::config::Config;
use beamflow_kernels::hedm::io::read_peaks_h5;
use beamflow_kernels::hedm::pipeline::match_truth;
use beamflow_kernels::synthetic::hedm::{write_dataset, Scene, TruePeak};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// `beamflow bench hedm`.
#[derive(clap::Args)]
pub struct BenchHedm {
    /// The detector's side in pixels.
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Frames in the dataset.
    #[arg(long, default_value_t = 4)]
    pub frames: usize,
    /// Peaks per frame.
    #[arg(long, default_value_t = 300)]
    pub peaks: usize,
    /// Polar (R, Eta) peaks instead of cartesian.
    #[arg(long)]
    pub polar: bool,
    /// Reuse (or create) the dataset here instead of a temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Search and fit speed on synthetic frames, and accuracy against their truth.
impl BenchHedm {
    pub fn run(self) -> anyhow::Result<Value> {
        bench(self)
    }
}

fn bench(b: BenchHedm) -> anyhow::Result<Value> {
    let tmp = tempfile::Builder::new()
        .prefix("beamflow-hedm-")
        .tempdir()?;
    let dir = b.data.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let scene = Scene {
        rows: b.size,
        cols: b.size,
        peaks_per_frame: b.peaks,
        polar: b.polar,
        ..Scene::default()
    };
    let name = format!(
        "hedm_{}_{}x{}_{}",
        if b.polar { "polar" } else { "cart" },
        b.size,
        b.frames,
        b.peaks
    );
    let frames_path = dir.join(format!("{name}.h5"));
    let truth_path = dir.join(format!("{name}_truth.json"));
    let t = Instant::now();
    if !(frames_path.exists() && truth_path.exists()) {
        write_dataset(&scene, b.frames, &dir, &name, &mut |_| {})
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let gen_s = t.elapsed().as_secs_f64();
    let cfg = Config {
        frames: frames_path,
        out: tmp.path().join("out"),
        dark_value: Some(scene.background),
        geometry: if b.polar { "polar" } else { "cartesian" }.into(),
        plot: false,
        ..Config::default()
    };
    let r = search(&cfg, true)?;
    let truth: Value = serde_json::from_str(&std::fs::read_to_string(&truth_path)?)?;
    let truth: Vec<TruePeak> = serde_json::from_value(truth["peaks"].clone())?;
    let rows = read_peaks_h5(&r.peaks_h5).map_err(|e| anyhow::anyhow!(e))?;
    // Columns: YCen 3, ZCen 4, nPeaks 12, Frame 29.
    let fitted: Vec<(u32, f64, f64)> = rows.iter().map(|p| (p[29] as u32, p[3], p[4])).collect();
    let single: Vec<(u32, f64, f64)> = rows
        .iter()
        .filter(|p| p[12] == 1.0)
        .map(|p| (p[29] as u32, p[3], p[4]))
        .collect();
    let t: Vec<(u32, f64, f64)> = truth.iter().map(|p| (p.frame, p.row, p.col)).collect();
    let (recall, all_err) = match_truth(&fitted, &t, 2.0);
    let (_, single_err) = match_truth(&single, &t, 2.0);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let s = &r.summary;
    Ok(json!({
        "size": b.size,
        "frames": s.frames,
        "true_peaks": truth.len(),
        "fitted_peaks": s.peaks,
        "regions": s.regions,
        "threads": rayon::current_num_threads(),
        "peaks_per_s_fit": s.peaks_per_s_fit,
        "frames_per_s": s.frames_per_s,
        "search_ms_per_frame": s.find_ms_per_frame,
        "fit_s": s.fit_s,
        "wall_s": s.wall_s,
        "converged": s.converged,
        "max_iter": s.max_iter,
        "stalled": s.stalled,
        "recall": recall,
        "precision": all_err.len() as f64 / s.peaks.max(1) as f64,
        "centre_error_mean_px": mean(&all_err),
        "single_peak_centre_error_mean_px": mean(&single_err),
        "single_peak_matches": single_err.len(),
        "generate_s": gen_s,
    }))
}
