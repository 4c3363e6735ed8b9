//! BraggNN on raw frames: the HEDM search (corrections, threshold,
//! 8-connected regions, size and saturation rules, regional maxima) seeds
//! one patch per peak — the same peaks the pseudo-Voigt fitter fits — and
//! the network gives each a sub-pixel centre instead of a fit.
//!
//! Each patch is the `psz` window around the peak's maximum pixel, cleaned
//! of neighbouring peaks ([`super::patches`]) and min–max normalised;
//! `P·output + corner` is the centre in frame pixels. Patches are batched
//! across frames. Peaks that share their region with another (`nPeaks` > 1)
//! or whose window leaves the frame are kept and flagged: the network was
//! trained on lone, whole peaks.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::normalise;
use super::net::Predictor;
use super::patches::FrameView;
use crate::hedm::config::Config as Search;
use crate::hedm::io::{self, Stack};
use crate::hedm::regions::Scratch;

/// Inference over a frame stack: the model, where it runs, and the
/// search's files and settings (those of `hedm.peaks`; the fit's are not
/// used).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
// No argument group: two flattened `Config`s would share its name.
#[group(skip)]
#[serde(default)]
pub struct Config {
    /// Peak model: `.onnx` (ONNX Runtime) or BraggNN weights
    /// (`.safetensors`, `.npz`: libtorch).
    #[arg(long)]
    pub model: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Patches per inference call.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub search: Search,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: PathBuf::new(),
            device: "auto".into(),
            batch: 512,
            search: Search::default(),
        }
    }
}

/// One located peak.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Located {
    pub frame: u32,
    pub omega: f64,
    /// The network's centre (row, col) in frame pixels (pixel centres at
    /// integers).
    pub row: f64,
    pub col: f64,
    /// The maximum pixel the patch is centred on, and its corrected value.
    pub max_row: u32,
    pub max_col: u32,
    pub imax: f64,
    /// Pixels and peaks of the peak's region.
    pub region_pixels: u32,
    pub region_peaks: u32,
    /// Window pixels replaced by the background (neighbours, mask, edge).
    pub replaced: u32,
    /// The window leaves the frame.
    pub edge: bool,
}

/// Column names of the peak table, in [`Located::values`] order (`YCen`,
/// `ZCen` = row, column as in the `hedm.peaks` table).
pub const COLUMNS: [&str; 13] = [
    "SpotID", "Frame", "Omega", "YCen", "ZCen", "maxY", "maxZ", "IMax", "NrPixels", "nPeaks",
    "Replaced", "Edge", "Lone",
];
const INT_COLUMNS: [&str; 9] = [
    "SpotID", "Frame", "maxY", "maxZ", "NrPixels", "nPeaks", "Replaced", "Edge", "Lone",
];

impl Located {
    /// A lone peak wholly inside the frame: what the network was trained on.
    pub fn lone(&self) -> bool {
        self.region_peaks == 1 && !self.edge
    }

    fn values(&self, id: usize) -> [f64; 13] {
        [
            id as f64,
            self.frame as f64,
            self.omega,
            self.row,
            self.col,
            self.max_row as f64,
            self.max_col as f64,
            self.imax,
            self.region_pixels as f64,
            self.region_peaks as f64,
            self.replaced as f64,
            f64::from(u8::from(self.edge)),
            f64::from(u8::from(self.lone())),
        ]
    }
}

/// Totals over a stack.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub frames: usize,
    pub regions: usize,
    pub peaks: usize,
    /// Peaks sharing their region with another.
    pub crowded: usize,
    /// Peaks whose window leaves the frame.
    pub edge: usize,
    /// Peaks alone in their region and wholly inside the frame.
    pub lone: usize,
    pub model: PathBuf,
    pub device: String,
    pub device_note: Option<String>,
    pub psz: usize,
    pub batch: usize,
    pub find_ms_per_frame: f64,
    /// Cutting, cleaning and normalising patches.
    pub cut_s: f64,
    /// The network alone.
    pub infer_s: f64,
    pub patches_per_s: f64,
    pub wall_s: f64,
    pub frames_per_s: f64,
}

/// What an inference run wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub peaks_h5: PathBuf,
    pub peaks_csv: PathBuf,
    pub summary_json: PathBuf,
}

/// Patches waiting for the network, with what each one is.
#[derive(Default)]
struct Pending {
    x: Vec<f32>,
    peaks: Vec<Located>,
    corners: Vec<[i64; 2]>,
}

impl Pending {
    /// Runs the network on everything pending and appends the located peaks.
    fn flush(
        &mut self,
        net: &mut Predictor,
        batch: usize,
        out: &mut Vec<Located>,
        s: &mut Summary,
    ) -> Result<(), String> {
        if self.peaks.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let y = net.predict(&self.x, self.peaks.len(), batch)?;
        s.infer_s += t.elapsed().as_secs_f64();
        let p = net.psz as f64;
        for ((mut l, c), xy) in self.peaks.drain(..).zip(&self.corners).zip(y) {
            l.col = c[1] as f64 + p * f64::from(xy[0]);
            l.row = c[0] as f64 + p * f64::from(xy[1]);
            out.push(l);
        }
        self.x.clear();
        self.corners.clear();
        Ok(())
    }
}

impl Config {
    /// Locates every peak the search seeds; `progress(done, total)` after
    /// each frame.
    pub fn locate(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<Located>, Summary), String> {
        let t0 = Instant::now();
        let search = &self.search;
        let stack = Stack::open(&search.frames, search.dataset.as_deref())?;
        let o = search.options(stack.rows, stack.cols)?;
        let (first, last) = o.frames.unwrap_or((0, stack.frames));
        let last = last.min(stack.frames);
        if first >= last {
            return Err(format!(
                "{}: frames {first}..{last} requested, the file has {}",
                stack.path().display(),
                stack.frames
            ));
        }
        let threads = rayon::current_num_threads();
        let mut net = Predictor::open(&self.model, &self.device, threads)?;
        let psz = net.psz;
        let mut s = Summary {
            model: self.model.clone(),
            device: net.device.clone(),
            device_note: net.device_note.clone(),
            psz,
            batch: self.batch.max(1),
            ..Summary::default()
        };
        o.check_images(stack.rows, stack.cols)?;
        let corr = o.corrections();
        let mut scratch = Scratch::default();
        let (mut pending, mut out) = (Pending::default(), Vec::new());
        let mut find_s = 0.0;
        for i in first..last {
            let raw = stack.frame(i)?;
            let t = Instant::now();
            let (regions, _) = o.regions(&raw, stack.rows, stack.cols, &mut scratch);
            find_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let view = FrameView {
                raw: &raw,
                img: &scratch.img,
                rows: stack.rows,
                cols: stack.cols,
                corr,
            };
            let omega = o.omega_start + o.omega_step * i as f64;
            let seeds: Vec<(usize, usize)> = regions
                .iter()
                .enumerate()
                .flat_map(|(r, reg)| reg.maxima.iter().map(move |&m| (r, m)))
                .collect();
            let cut: Vec<(Vec<f32>, Located, [i64; 2])> = seeds
                .par_iter()
                .map(|&(r, m)| {
                    let reg = &regions[r];
                    let at = (reg.rows[m] as usize, reg.cols[m] as usize);
                    let mut p = vec![0f32; psz * psz];
                    let c = view.cut(at, psz, &mut p);
                    normalise(&mut p);
                    let l = Located {
                        frame: i as u32,
                        omega,
                        row: f64::NAN,
                        col: f64::NAN,
                        max_row: at.0 as u32,
                        max_col: at.1 as u32,
                        imax: reg.z[m],
                        region_pixels: reg.rows.len() as u32,
                        region_peaks: reg.maxima.len() as u32,
                        replaced: c.replaced,
                        edge: c.edge,
                    };
                    (p, l, c.corner)
                })
                .collect();
            s.regions += regions.len();
            for (p, l, c) in cut {
                pending.x.extend_from_slice(&p);
                pending.peaks.push(l);
                pending.corners.push(c);
            }
            s.cut_s += t.elapsed().as_secs_f64();
            if pending.peaks.len() >= s.batch {
                pending.flush(&mut net, s.batch, &mut out, &mut s)?;
            }
            progress(i + 1 - first, last - first);
        }
        pending.flush(&mut net, s.batch, &mut out, &mut s)?;
        s.frames = last - first;
        s.peaks = out.len();
        s.crowded = out.iter().filter(|l| l.region_peaks > 1).count();
        s.edge = out.iter().filter(|l| l.edge).count();
        s.lone = out.iter().filter(|l| l.lone()).count();
        s.find_ms_per_frame = 1e3 * find_s / s.frames as f64;
        s.patches_per_s = s.peaks as f64 / s.infer_s.max(1e-9);
        s.wall_s = t0.elapsed().as_secs_f64();
        s.frames_per_s = s.frames as f64 / s.wall_s.max(1e-9);
        Ok((out, s))
    }

    /// Locates the peaks and writes `NAME_braggnn.h5` (`/peaks`, columns
    /// [`COLUMNS`]), `NAME_braggnn.csv` and `NAME_braggnn_summary.json`.
    pub fn run(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Report, String> {
        let (peaks, summary) = self.locate(progress)?;
        let search = &self.search;
        std::fs::create_dir_all(&search.out)
            .map_err(|e| format!("{}: cannot create: {e}", search.out.display()))?;
        let [h5, csv, js] = search.outputs(["braggnn.h5", "braggnn.csv", "braggnn_summary.json"]);
        let flat: Vec<f64> = peaks
            .iter()
            .enumerate()
            .flat_map(|(k, p)| p.values(k + 1))
            .collect();
        let attrs = [
            ("source", search.frames.display().to_string()),
            ("model", self.model.display().to_string()),
            ("device", summary.device.clone()),
            ("settings", serde_json::to_string(self).unwrap_or_default()),
            (
                "creator",
                format!("beamflow-kernels {}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        io::write_table_h5(&h5, &COLUMNS, flat.clone(), &attrs)?;
        io::write_table_csv(&csv, &COLUMNS, &flat, &INT_COLUMNS)?;
        let report = Report {
            summary,
            peaks_h5: h5,
            peaks_csv: csv,
            summary_json: js.clone(),
        };
        std::fs::write(
            &js,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: cannot write: {e}", js.display()))?;
        Ok(report)
    }
}
