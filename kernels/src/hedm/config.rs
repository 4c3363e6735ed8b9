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
use crate::synthetic::hedm::Scene;

/// A peak search over a stack of frames, as `beamflow kernel hedm peaks`
/// takes it (each field a flag of the same name) and a `hedm.peaks` step
/// (and the BraggNN steps that search frames) as `params`. Defaults are
/// MIDAS's, the same on both ([`Config::default`]; a test compares them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
// No argument group: two flattened `Config`s would share its name.
#[group(skip)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HDF5 frame stack (uint8/16/32 or float32/64).
    #[arg(long)]
    pub frames: PathBuf,
    /// Dataset in it (default `/entry/data/data`).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Output directory.
    #[arg(long, short = 'o', default_value = ".")]
    pub out: PathBuf,
    /// Base name of the outputs (default: the frame file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an earlier run's outputs instead of numbering new ones
    /// (NAME_1_peaks.h5, …).
    #[arg(long, short = 'w')]
    pub overwrite: bool,
    /// Dark image (HDF5; a stack is averaged).
    #[arg(long, conflicts_with = "dark_value")]
    pub dark: Option<PathBuf>,
    /// One dark value for every pixel.
    #[arg(long)]
    pub dark_value: Option<f64>,
    /// Flat-field image (HDF5) the dark-corrected frames are divided by.
    #[arg(long)]
    pub flood: Option<PathBuf>,
    /// Bad-pixel mask (HDF5, non-zero = bad).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Threshold above the dark, counts (every pixel, unless rings are given).
    #[arg(long, default_value_t = 30.0)]
    pub threshold: f64,
    /// A diffraction ring RADIUS:WIDTH:THRESHOLD in pixels (repeatable):
    /// only pixels on a ring are searched, each with its ring's threshold.
    #[arg(long = "rings", visible_alias = "ring", value_parser = parse_ring)]
    pub rings: Vec<Ring>,
    /// Fitting coordinates: cartesian (row, col) or polar (R, Eta).
    #[arg(long, default_value = "cartesian", value_parser = ["cartesian", "polar"])]
    pub geometry: String,
    /// Beam centre ROW,COL (default: the frame's centre).
    #[arg(long, value_parser = parse_centre)]
    pub centre: Option<[f64; 2]>,
    /// Regions need more pixels than this.
    #[arg(long, default_value_t = FindOptions::default().min_pixels)]
    pub min_pixels: usize,
    /// Regions need fewer pixels than this.
    #[arg(long, default_value_t = FindOptions::default().max_pixels)]
    pub max_pixels: usize,
    /// Regions with a pixel above this are saturated and skipped.
    #[arg(long, default_value_t = FindOptions::default().saturation)]
    pub saturation: f64,
    /// At most this many peaks per region.
    #[arg(long, default_value_t = FindOptions::default().max_peaks)]
    pub max_peaks: usize,
    /// Drop maxima less than this above the dip towards a brighter one (off
    /// by default, as in MIDAS).
    #[arg(long)]
    pub prominence: Option<f64>,
    /// Omega of the first frame, degrees.
    #[arg(long, default_value_t = 0.0)]
    pub omega_start: f64,
    /// Omega per frame, degrees.
    #[arg(long, default_value_t = 0.0)]
    pub omega_step: f64,
    /// First frame (inclusive).
    #[arg(long, visible_alias = "first")]
    pub first_frame: Option<usize>,
    /// Last frame (exclusive).
    #[arg(long, visible_alias = "last")]
    pub last_frame: Option<usize>,
    /// Most trial steps (model evaluations) per region fit.
    #[arg(long, default_value_t = LmOptions::default().max_iter)]
    pub max_iter: u32,
    /// Relative tolerance on the cost reduction, the step and the gradient
    /// at which a fit has converged.
    #[arg(long, default_value_t = LmOptions::default().tol)]
    pub tol: f64,
    /// Write the PNG overlay of the first frame (`--plot false`: not).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub plot: bool,
}

/// `RADIUS:WIDTH:THRESHOLD`, pixels and counts.
pub fn parse_ring(s: &str) -> Result<Ring, String> {
    let bad = || format!("`{s}`: write RADIUS:WIDTH:THRESHOLD, e.g. 512:6:80");
    let p: Vec<f64> = s
        .split(':')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    match p[..] {
        [radius, width, threshold] => Ok(Ring {
            radius,
            width,
            threshold,
        }),
        _ => Err(bad()),
    }
}

/// `ROW,COL`, pixels.
pub fn parse_centre(s: &str) -> Result<[f64; 2], String> {
    let p: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}`: write ROW,COL, e.g. 1023.5,1023.5"))?;
    match p[..] {
        [row, col] => Ok([row, col]),
        _ => Err(format!("`{s}`: write ROW,COL, e.g. 1023.5,1023.5")),
    }
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
            overwrite: false,
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

/// Frames with known pseudo-Voigt peaks (`beamflow kernel hedm
/// synthetic`, the `hedm.synthetic` step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticParams {
    /// Directory to write into (default: the current directory; in a flow,
    /// the attempt's directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Base name of the files.
    #[arg(long, default_value = "hedm")]
    pub name: String,
    /// Frames in the stack.
    #[arg(long, default_value_t = 4)]
    pub frames: usize,
    /// Frame side, pixels (at least 64).
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Peaks per frame (default: 300 on a 2048² frame, as many per area
    /// on others).
    #[arg(long)]
    pub peaks: Option<usize>,
    /// Peaks defined in (R, Eta) about the centre instead of (row, col).
    #[arg(long)]
    pub polar: bool,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Background counts under the peaks.
    #[arg(long, default_value_t = Scene::default().background)]
    pub background: f64,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            dir: None,
            name: "hedm".into(),
            frames: 4,
            size: 2048,
            peaks: None,
            polar: false,
            seed: 1234,
            background: Scene::default().background,
        }
    }
}

impl SyntheticParams {
    /// The scene to draw, checked.
    pub fn scene(&self) -> Result<Scene, String> {
        if self.size < 64 {
            return Err(format!("size: {} is below 64 pixels", self.size));
        }
        if self.frames == 0 {
            return Err("frames: at least 1".into());
        }
        let area = self.size * self.size;
        Ok(Scene {
            rows: self.size,
            cols: self.size,
            peaks_per_frame: self.peaks.unwrap_or(300 * area / (2048 * 2048)).max(1),
            background: self.background,
            polar: self.polar,
            seed: self.seed,
            ..Scene::default()
        })
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

    /// A run's `OUT/NAME_suffix` files: NAME is `name`, or the frame
    /// file's stem, numbered as one ([`crate::output`]) when an earlier
    /// run's are there and `overwrite` is off.
    pub fn outputs<const N: usize>(&self, suffixes: [&str; N]) -> [PathBuf; N] {
        let tag = crate::output::fresh_tag(self.overwrite, |tag| {
            suffixes.map(|s| self.tagged(tag, s)).to_vec()
        });
        suffixes.map(|s| self.tagged(&tag, s))
    }

    fn tagged(&self, tag: &str, suffix: &str) -> PathBuf {
        let name = self.name.clone().unwrap_or_else(|| {
            self.frames
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "hedm".into())
        });
        self.out.join(format!("{name}{tag}_{suffix}"))
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
        let [h5, csv, js, overlay_png] =
            self.outputs(["peaks.h5", "peaks.csv", "summary.json", "overlay.png"]);
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
            let p = overlay_png;
            super::plot::overlay(
                &p,
                &frame,
                stack.rows,
                stack.cols,
                &peaks,
                first as u32,
                1024,
                &self
                    .frames
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| self.frames.display().to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_and_a_flow_step_default_alike() {
        crate::params::same_defaults::<Config>(
            &["--frames", "f.h5"],
            json!({ "frames": "f.h5", "out": "." }),
        );
        crate::params::same_defaults::<SyntheticParams>(&[], json!({}));
    }

    #[test]
    fn rings_and_centres_read_as_written() {
        assert_eq!(
            parse_ring("512:6:80"),
            Ok(Ring {
                radius: 512.0,
                width: 6.0,
                threshold: 80.0
            })
        );
        assert!(parse_ring("512:6").is_err());
        assert_eq!(parse_centre("255.5,255.5"), Ok([255.5, 255.5]));
        assert!(parse_centre("255.5").unwrap_err().contains("ROW,COL"));
    }
}
