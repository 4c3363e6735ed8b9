//! A stack of frames through search and fit: frames are read one at a time,
//! regions found on the whole frame, and regions fitted in parallel.

use std::time::Instant;

use serde::Serialize;

use super::fit::{fit_regions, FitOptions, Peak};
use super::io::Stack;
use super::regions::{correct, find, Corrections, FindOptions, FindStats, Region, Scratch};

/// Everything a search needs besides the frames.
#[derive(Clone, Debug)]
pub struct Options {
    pub find: FindOptions,
    pub fit: FitOptions,
    /// Subtracted from every pixel (a dark image, or one value for all).
    pub dark: Dark,
    /// Divides every pixel after the dark (a flat-field image).
    pub flood: Option<Vec<f32>>,
    /// Non-zero: a bad pixel.
    pub mask: Option<Vec<u8>>,
    /// Omega of frame 0 and per frame, degrees.
    pub omega_start: f64,
    pub omega_step: f64,
    /// Frames to process (`first..last`), all when `None`.
    pub frames: Option<(usize, usize)>,
}

impl Options {
    /// That the dark, flood and mask images fit frames of `rows` × `cols`.
    pub fn check_images(&self, rows: usize, cols: usize) -> Result<(), String> {
        let c = self.corrections();
        let sizes = [
            ("dark", c.dark.map(<[f32]>::len)),
            ("flood", c.flood.map(<[f32]>::len)),
            ("mask", c.mask.map(<[u8]>::len)),
        ];
        match sizes
            .into_iter()
            .find(|(_, n)| n.is_some_and(|n| n != rows * cols))
        {
            Some((what, Some(len))) => Err(format!(
                "{what}: {len} pixels, the frames have {rows} × {cols}"
            )),
            _ => Ok(()),
        }
    }

    /// Corrects and thresholds frame `raw` into `scratch.img`.
    pub fn correct(&self, raw: &[f32], rows: usize, cols: usize, scratch: &mut Scratch) {
        correct(
            raw,
            rows,
            cols,
            &self.corrections(),
            &self.find.threshold,
            scratch,
        );
    }

    /// The peak regions of frame `raw` (corrected and thresholded into
    /// `scratch.img` on the way).
    pub fn regions(
        &self,
        raw: &[f32],
        rows: usize,
        cols: usize,
        scratch: &mut Scratch,
    ) -> (Vec<Region>, FindStats) {
        self.correct(raw, rows, cols, scratch);
        find(scratch, rows, cols, self.mask.as_deref(), &self.find)
    }

    /// The per-pixel corrections these options ask for.
    pub fn corrections(&self) -> Corrections<'_> {
        let (dark, dark_value) = match &self.dark {
            Dark::None => (None, 0.0),
            Dark::Value(v) => (None, *v),
            Dark::Image(d) => (Some(&d[..]), 0.0),
        };
        Corrections {
            dark,
            dark_value,
            flood: self.flood.as_deref(),
            mask: self.mask.as_deref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Dark {
    None,
    Value(f32),
    Image(Vec<f32>),
}

/// What one frame gave and cost.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FrameStats {
    pub regions: usize,
    pub peaks: usize,
    pub find_s: f64,
    pub fit_s: f64,
    pub dropped_small: usize,
    pub dropped_large: usize,
    pub dropped_saturated: usize,
}

/// Totals over a stack.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub frames: usize,
    pub regions: usize,
    pub peaks: usize,
    pub converged: usize,
    pub max_iter: usize,
    pub stalled: usize,
    pub find_s: f64,
    pub fit_s: f64,
    pub wall_s: f64,
    pub peaks_per_s_fit: f64,
    pub frames_per_s: f64,
    pub find_ms_per_frame: f64,
}

/// Finds and fits the peaks of one frame (`raw`, row-major); `scratch` is
/// reused from frame to frame.
pub fn frame(
    raw: &[f32],
    rows: usize,
    cols: usize,
    index: usize,
    o: &Options,
    scratch: &mut Scratch,
) -> (Vec<Peak>, FrameStats) {
    let t = Instant::now();
    let (regions, st) = o.regions(raw, rows, cols, scratch);
    let find_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let omega = o.omega_start + o.omega_step * index as f64;
    let peaks = fit_regions(&regions, &o.fit, omega, index as u32);
    let fit_s = t.elapsed().as_secs_f64();
    let stats = FrameStats {
        regions: regions.len(),
        peaks: peaks.len(),
        find_s,
        fit_s,
        dropped_small: st.too_small,
        dropped_large: st.too_large,
        dropped_saturated: st.saturated,
    };
    (peaks, stats)
}

/// Every frame of `stack`; `progress(done, total)` after each frame. Spot
/// ids are numbered from 1 over the whole stack.
pub fn run(
    stack: &Stack,
    o: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Peak>, Summary), String> {
    let t0 = Instant::now();
    let (first, last) = o.frames.unwrap_or((0, stack.frames));
    if first >= last || last > stack.frames {
        return Err(format!(
            "{}: frames {first}..{last} requested, the file has {}",
            stack.path().display(),
            stack.frames
        ));
    }
    o.check_images(stack.rows, stack.cols)?;
    let mut all = Vec::new();
    let mut s = Summary::default();
    let mut scratch = Scratch::default();
    for i in first..last {
        let raw = stack.frame(i)?;
        let (peaks, st) = frame(&raw, stack.rows, stack.cols, i, o, &mut scratch);
        s.regions += st.regions;
        s.find_s += st.find_s;
        s.fit_s += st.fit_s;
        all.extend(peaks);
        progress(i + 1 - first, last - first);
    }
    for (k, p) in all.iter_mut().enumerate() {
        p.spot_id = k as u64 + 1;
        match p.return_code {
            0 => s.converged += 1,
            1 => s.max_iter += 1,
            _ => s.stalled += 1,
        }
    }
    s.frames = last - first;
    s.peaks = all.len();
    s.wall_s = t0.elapsed().as_secs_f64();
    s.peaks_per_s_fit = s.peaks as f64 / s.fit_s.max(1e-9);
    s.frames_per_s = s.frames as f64 / s.wall_s.max(1e-9);
    s.find_ms_per_frame = 1e3 * s.find_s / s.frames.max(1) as f64;
    Ok((all, s))
}

/// Matches fitted peaks to true centres (within `radius` px): recall, and
/// the centre errors of matched true peaks.
pub fn match_truth(
    fitted: &[(u32, f64, f64)],
    truth: &[(u32, f64, f64)],
    radius: f64,
) -> (f64, Vec<f64>) {
    let mut errors = Vec::new();
    let mut found = 0usize;
    for &(tf, tr, tc) in truth {
        let best = fitted
            .iter()
            .filter(|f| f.0 == tf)
            .map(|f| (f.1 - tr).hypot(f.2 - tc))
            .fold(f64::INFINITY, f64::min);
        if best <= radius {
            found += 1;
            errors.push(best);
        }
    }
    (found as f64 / truth.len().max(1) as f64, errors)
}
