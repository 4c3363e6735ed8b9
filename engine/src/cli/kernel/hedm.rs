//! `beamflow kernel hedm …` and `beamflow bench hedm`: Bragg-peak search and
//! fit on HDF5 frame stacks, outside any flow, with a progress bar.

use std::path::PathBuf;

use beamflow_kernels::hedm::config::{Config, Report};
use beamflow_kernels::hedm::{LmOptions, Ring};
use beamflow_kernels::synthetic::hedm::{write_dataset, Scene};
use clap::{Args, Subcommand};

use crate::cli::render::{bar, Out};

#[derive(Subcommand)]
pub enum HedmCmd {
    /// Find and fit Bragg peaks: peak table (HDF5 + CSV), overlay PNG, summary JSON.
    Peaks(Box<PeaksArgs>),
    /// Write frames with known pseudo-Voigt peaks.
    Synthetic(SyntheticArgs),
}

/// The frames, corrections and region search, shared by every command
/// that searches frames (`hedm peaks`, `braggnn infer`, `braggnn prepare`).
#[derive(Args)]
pub struct SearchArgs {
    /// HDF5 frame stack (uint8/16/32 or float32/64).
    #[arg(long)]
    frames: PathBuf,
    /// Dataset in the file.
    #[arg(long, default_value = "/entry/data/data")]
    dataset: String,
    /// Output directory.
    #[arg(long, short = 'o', default_value = ".")]
    out: PathBuf,
    /// Base name of the outputs (default: the frame file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Dark image (HDF5; a stack is averaged).
    #[arg(long, conflicts_with = "dark_value")]
    dark: Option<PathBuf>,
    /// One dark value for every pixel.
    #[arg(long)]
    dark_value: Option<f64>,
    /// Flat-field image (HDF5).
    #[arg(long)]
    flood: Option<PathBuf>,
    /// Bad-pixel mask (HDF5, non-zero = bad).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Threshold above the dark, counts (all pixels, unless --ring is given).
    #[arg(long, default_value_t = 30.0)]
    threshold: f64,
    /// A diffraction ring RADIUS:WIDTH:THRESHOLD in pixels (repeatable):
    /// only pixels on a ring are searched, each with its ring's threshold.
    #[arg(long = "ring", value_parser = ring)]
    rings: Vec<Ring>,
    /// Beam centre ROW,COL (default: the frame's centre).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    centre: Option<Vec<f64>>,
    /// Regions need more pixels than this.
    #[arg(long, default_value_t = 1)]
    min_pixels: usize,
    /// Regions need fewer pixels than this.
    #[arg(long, default_value_t = 10_000)]
    max_pixels: usize,
    /// Regions with a pixel above this are saturated and skipped.
    #[arg(long, default_value_t = 14_000.0)]
    saturation: f64,
    /// At most this many peaks per region.
    #[arg(long, default_value_t = 400)]
    max_peaks: usize,
    /// Drop maxima less than this above the dip towards a brighter one (off by default, as in MIDAS).
    #[arg(long)]
    prominence: Option<f64>,
    /// Omega of the first frame and per frame, degrees.
    #[arg(long, default_value_t = 0.0)]
    omega_start: f64,
    #[arg(long, default_value_t = 0.0)]
    omega_step: f64,
    /// First frame (inclusive).
    #[arg(long)]
    first: Option<usize>,
    /// Last frame (exclusive).
    #[arg(long)]
    last: Option<usize>,
}

impl SearchArgs {
    /// The search as a [`Config`] with the fit's defaults.
    pub fn config(&self) -> Config {
        Config {
            frames: self.frames.clone(),
            dataset: Some(self.dataset.clone()),
            out: self.out.clone(),
            name: self.name.clone(),
            dark: self.dark.clone(),
            dark_value: self.dark_value,
            flood: self.flood.clone(),
            mask: self.mask.clone(),
            threshold: self.threshold,
            rings: self.rings.clone(),
            centre: self.centre.as_ref().map(|c| [c[0], c[1]]),
            min_pixels: self.min_pixels,
            max_pixels: self.max_pixels,
            saturation: self.saturation,
            max_peaks: self.max_peaks,
            prominence: self.prominence,
            omega_start: self.omega_start,
            omega_step: self.omega_step,
            first_frame: self.first,
            last_frame: self.last,
            ..Config::default()
        }
    }
}

#[derive(Args)]
pub struct PeaksArgs {
    #[command(flatten)]
    search: SearchArgs,
    /// Fitting coordinates: cartesian (row, col) or polar (R, Eta).
    #[arg(long, default_value = "cartesian", value_parser = ["cartesian", "polar"])]
    geometry: String,
    /// Most trial steps (model evaluations) per region fit.
    #[arg(long, default_value_t = LmOptions::default().max_iter)]
    max_iter: u32,
    /// Relative tolerance on the cost reduction, the step and the gradient
    /// at which a fit has converged.
    #[arg(long, default_value_t = LmOptions::default().tol)]
    tol: f64,
    /// Skip the overlay PNG.
    #[arg(long)]
    no_plot: bool,
}

#[derive(Args)]
pub struct SyntheticArgs {
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value = "hedm")]
    name: String,
    #[arg(long, default_value_t = 4)]
    frames: usize,
    /// Frame side, pixels.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Peaks per frame.
    #[arg(long, default_value_t = 300)]
    peaks: usize,
    /// Peaks defined in (R, Eta) about the centre instead of (row, col).
    #[arg(long)]
    polar: bool,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

fn ring(s: &str) -> Result<Ring, String> {
    let p: Vec<f64> = s
        .split(':')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}`: write RADIUS:WIDTH:THRESHOLD, e.g. 512:6:80"))?;
    match p[..] {
        [radius, width, threshold] => Ok(Ring {
            radius,
            width,
            threshold,
        }),
        _ => Err(format!(
            "`{s}`: write RADIUS:WIDTH:THRESHOLD, e.g. 512:6:80"
        )),
    }
}

impl PeaksArgs {
    fn config(&self) -> Config {
        Config {
            geometry: self.geometry.clone(),
            max_iter: self.max_iter,
            tol: self.tol,
            plot: !self.no_plot,
            ..self.search.config()
        }
    }
}

/// Runs a search with a progress bar.
pub(crate) fn search(cfg: &Config, quiet: bool) -> anyhow::Result<Report> {
    let b = bar(0, "peaks", quiet);
    let r = cfg.run(&mut |done, total| {
        b.set_length(total as u64);
        b.set_position(done as u64);
    });
    b.finish_and_clear();
    r.map_err(|e| anyhow::anyhow!(e))
}

pub fn run(cmd: HedmCmd, out: Out) -> anyhow::Result<()> {
    let json_out = out.is_json();
    match cmd {
        HedmCmd::Peaks(a) => {
            let r = search(&a.config(), json_out)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let s = &r.summary;
            let t = crate::cli::render::figures([
                ("frames", s.frames.to_string()),
                ("regions", s.regions.to_string()),
                ("peaks", s.peaks.to_string()),
                (
                    "converged / max-iter / stalled",
                    format!("{} / {} / {}", s.converged, s.max_iter, s.stalled),
                ),
                ("search ms/frame", format!("{:.1}", s.find_ms_per_frame)),
                ("peaks/s fitted", format!("{:.0}", s.peaks_per_s_fit)),
                ("frames/s", format!("{:.2}", s.frames_per_s)),
            ]);
            println!("{t}");
            println!("peaks: {}", r.peaks_h5.display());
            println!("       {}", r.peaks_csv.display());
            if let Some(o) = &r.overlay {
                println!("overlay: {}", o.display());
            }
            Ok(())
        }
        HedmCmd::Synthetic(a) => {
            let scene = Scene {
                rows: a.size,
                cols: a.size,
                peaks_per_frame: a.peaks,
                polar: a.polar,
                seed: a.seed,
                ..Scene::default()
            };
            let b = bar(a.frames as u64, "synthetic", false);
            let f = write_dataset(&scene, a.frames, &a.dir, &a.name, &mut |i| {
                b.set_position(i as u64)
            })
            .map_err(|e| anyhow::anyhow!(e))?;
            b.finish_and_clear();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                println!(
                    "{} frames of {}² with {} peaks: {}\ntruth: {}",
                    a.frames,
                    a.size,
                    f.peaks,
                    f.frames.display(),
                    f.truth.display()
                );
            }
            Ok(())
        }
    }
}
