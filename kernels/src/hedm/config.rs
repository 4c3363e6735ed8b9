//! One description of a peak search, shared by the CLI and flow steps: the
//! files, the search and fit settings, and what to write.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fit::FitOptions;
use super::init::Geometry;
use super::io::{self, Stack};
use super::lm::LmOptions;
use super::pipeline::{self, Dark, Options, Summary};
use super::regions::{FindOptions, Ring, Threshold};

/// A peak search over a stack of frames. Defaults are MIDAS's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HDF5 frame stack.
    pub frames: PathBuf,
    /// Dataset in it (default `/entry/data/data`).
    pub dataset: Option<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Base name of the outputs (default: the frame file's stem).
    pub name: Option<String>,
    /// Dark image (HDF5; a stack is averaged), or one value for every pixel.
    pub dark: Option<PathBuf>,
    pub dark_value: Option<f64>,
    /// Flat-field image (HDF5) the dark-corrected frames are divided by.
    pub flood: Option<PathBuf>,
    /// Bad-pixel mask (HDF5, non-zero = bad).
    pub mask: Option<PathBuf>,
    /// Threshold everywhere, or per ring when `rings` is given.
    pub threshold: f64,
    pub rings: Vec<Ring>,
    /// `cartesian` (row, col) or `polar` (R, Eta) fitting coordinates.
    pub geometry: String,
    /// Beam centre (row, col); default: the frame's centre.
    pub centre: Option<[f64; 2]>,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub saturation: f64,
    pub max_peaks: usize,
    pub prominence: Option<f64>,
    pub omega_start: f64,
    pub omega_step: f64,
    pub first_frame: Option<usize>,
    pub last_frame: Option<usize>,
    pub max_iter: u32,
    pub tol: f64,
    /// Write the PNG overlay of the first frame.
    pub plot: bool,
}

impl Default for Config {
    fn default() -> Self {
        let f = FindOptions::default();
        let l = LmOptions::default();
        Config {
            frames: PathBuf::new(),
            dataset: None,
            out: PathBuf::from("."),
            name: None,
            dark: None,
            dark_value: None,
            flood: None,
            mask: None,
            threshold: 30.0,
            rings: Vec::new(),
            geometry: "cartesian".into(),
            centre: None,
            min_pixels: f.min_pixels,
            max_pixels: f.max_pixels,
            saturation: f.saturation,
            max_peaks: f.max_peaks,
            prominence: None,
            omega_start: 0.0,
            omega_step: 0.0,
            first_frame: None,
            last_frame: None,
            max_iter: l.max_iter,
            tol: l.tol,
            plot: true,
        }
    }
}

/// What a search produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub peaks_h5: PathBuf,
    pub peaks_csv: PathBuf,
    pub overlay: Option<PathBuf>,
    pub summary_json: PathBuf,
    pub rows: usize,
    pub cols: usize,
}

/// A dark or flood image: the mean of the frames of `/entry/data/data`, or
/// of the first dataset at the root; errors start with `what`.
pub fn image(path: &Path, what: &str) -> Result<Vec<f32>, String> {
    Stack::open(path, None)
        .or_else(|_| {
            // Dark/flood files often keep their image at the root.
            let name = crate::h5check::open(path)
                .ok()
                .and_then(|f| f.member_names().ok())
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            Stack::open(path, Some(&name))
        })
        .and_then(|s| s.mean())
        .map_err(|e| format!("{what}: {e}"))
}

impl Config {
    /// The search settings for frames of `rows` × `cols`.
    pub fn options(&self, rows: usize, cols: usize) -> Result<Options, String> {
        let centre = self
            .centre
            .unwrap_or([(rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0]);
        let geometry = match self.geometry.as_str() {
            "cartesian" => Geometry::Cartesian,
            "polar" => Geometry::Polar {
                row0: centre[0],
                col0: centre[1],
            },
            other => return Err(format!("geometry: `{other}` is not `cartesian` or `polar`")),
        };
        let threshold = if self.rings.is_empty() {
            Threshold::Global(self.threshold)
        } else {
            Threshold::Rings {
                row0: centre[0],
                col0: centre[1],
                rings: self.rings.clone(),
            }
        };
        let dark = match (&self.dark, self.dark_value) {
            (Some(_), Some(_)) => return Err("give dark or dark_value, not both".into()),
            (Some(p), None) => Dark::Image(image(p, "dark")?),
            (None, Some(v)) => Dark::Value(v as f32),
            (None, None) => Dark::None,
        };
        let flood = self
            .flood
            .as_deref()
            .map(|p| image(p, "flood"))
            .transpose()?;
        let mask = self
            .mask
            .as_deref()
            .map(|p| image(p, "mask").map(|m| m.iter().map(|&v| (v != 0.0) as u8).collect()))
            .transpose()?;
        if self.tol.is_nan() || self.tol <= 0.0 || self.max_iter == 0 {
            return Err("tol must be positive and max_iter at least 1".into());
        }
        Ok(Options {
            find: FindOptions {
                threshold,
                min_pixels: self.min_pixels,
                max_pixels: self.max_pixels,
                saturation: self.saturation,
                max_peaks: self.max_peaks.max(1),
                prominence: self.prominence,
                max_regions: FindOptions::default().max_regions,
            },
            fit: FitOptions {
                geometry,
                centre: (centre[0], centre[1]),
                lm: LmOptions {
                    max_iter: self.max_iter,
                    tol: self.tol,
                },
            },
            dark,
            flood,
            mask,
            omega_start: self.omega_start,
            omega_step: self.omega_step,
            frames: match (self.first_frame, self.last_frame) {
                (None, None) => None,
                (a, b) => Some((a.unwrap_or(0), b.unwrap_or(usize::MAX))),
            },
        })
    }

    /// `OUT/NAME_suffix`: NAME is `name`, or the frame file's stem.
    pub fn output(&self, suffix: &str) -> PathBuf {
        let name = self.name.clone().unwrap_or_else(|| {
            self.frames
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "hedm".into())
        });
        self.out.join(format!("{name}_{suffix}"))
    }

    /// Runs the search and writes `NAME_peaks.h5`, `NAME_peaks.csv`,
    /// `NAME_summary.json` and (with `plot`) `NAME_overlay.png`.
    pub fn run(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Report, String> {
        let stack = Stack::open(&self.frames, self.dataset.as_deref())?;
        let mut o = self.options(stack.rows, stack.cols)?;
        if let Some((a, b)) = o.frames {
            o.frames = Some((a, b.min(stack.frames)));
        }
        let (peaks, summary) = pipeline::run(&stack, &o, progress)?;
        std::fs::create_dir_all(&self.out)
            .map_err(|e| format!("{}: cannot create: {e}", self.out.display()))?;
        let at = |suffix: &str| self.output(suffix);
        let (h5, csv, js) = (at("peaks.h5"), at("peaks.csv"), at("summary.json"));
        let settings = serde_json::to_string(self).unwrap_or_default();
        io::write_peaks_h5(
            &h5,
            &peaks,
            &[
                ("source", self.frames.display().to_string()),
                ("settings", settings),
                (
                    "creator",
                    format!("beamflow-kernels {}", env!("CARGO_PKG_VERSION")),
                ),
            ],
        )?;
        io::write_peaks_csv(&csv, &peaks)?;
        let overlay = if self.plot {
            let first = o.frames.map(|f| f.0).unwrap_or(0);
            let frame = stack.frame(first)?;
            let p = at("overlay.png");
            super::plot::overlay(
                &p,
                &frame,
                stack.rows,
                stack.cols,
                &peaks,
                first as u32,
                1024,
            )?;
            Some(p)
        } else {
            None
        };
        let report = Report {
            summary,
            peaks_h5: h5,
            peaks_csv: csv,
            overlay,
            summary_json: js.clone(),
            rows: stack.rows,
            cols: stack.cols,
        };
        std::fs::write(
            &js,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: cannot write: {e}", js.display()))?;
        Ok(report)
    }
}
