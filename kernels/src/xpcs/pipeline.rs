//! One XPCS analysis from files to files, as the reference CLI does it:
//! raw frames + qmap + beamline metadata → results HDF5 (the viewer's
//! layout), a JSON summary of fits per q (Γ, β) and PNG plots.
//!
//! A reader thread reads frames in batches a bounded channel hands over, so
//! reading overlaps correlating and memory is bounded by the batches and the
//! correlator state, never by the number of frames. Multi-tau and the
//! averages run in the first pass; two-time groups whose frames do not fit
//! the memory budget together get further passes over the file.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ndarray::{Array2, Array3};
use rayon::prelude::*;
use serde::Serialize;

use super::fit::{fit_g2, ExpFit};
use super::io::{open_frames, read_frame_time, read_qmap, FrameSource, Frames};
use super::multitau::{Multitau, PixelSums};
use super::qbin::{normalize, G2Result};
use super::results::{results_path, ConfigValue, ResultsWriter};
use super::scattering::{saxs_1d, saxs_2d};
use super::twotime::{Collector, TwotimePlan};
use super::Delay;
use super::{plot, QMap};
use crate::ranks::{share_of, Collective};

/// Which correlations to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    Multitau,
    Twotime,
    Both,
}

impl Mode {
    fn multitau(self) -> bool {
        self != Mode::Twotime
    }
    fn twotime(self) -> bool {
        self != Mode::Multitau
    }
    /// The viewer's analysis-type label.
    fn label(self) -> &'static str {
        match self {
            Mode::Multitau => "Multitau",
            Mode::Twotime => "Twotime",
            Mode::Both => "Both",
        }
    }
}

/// What to analyse and how; the reference CLI's options.
#[derive(Clone, Debug)]
pub struct Options {
    pub raw: PathBuf,
    pub qmap: PathBuf,
    pub out_dir: PathBuf,
    /// `*_metadata.hdf`; found next to the raw file when `None`.
    pub meta: Option<PathBuf>,
    pub mode: Mode,
    /// First raw frame (inclusive) and last (exclusive; `None` = all).
    pub begin: usize,
    pub end: Option<usize>,
    /// Take every `stride`-th frame, then average `avg` consecutive ones.
    pub stride: usize,
    pub avg: usize,
    /// Dynamic bins for two-time (`None` = all non-empty bins).
    pub dq_selection: Option<Vec<u32>>,
    /// Memory for the two-time frame store, bytes.
    pub max_memory: usize,
    pub overwrite: bool,
    /// Write the PNG plots.
    pub plots: bool,
    /// Multi-tau implementation and device.
    pub backend: Backend,
    /// Divide each frame by its mean over the valid pixels before the
    /// multi-tau correlation (the reference CLI's `-nf 1`). The SAXS image
    /// and intensity vs time are taken before, the segment profiles after,
    /// as in the reference; two-time never normalises frames.
    pub normalize_frame: bool,
}

impl Options {
    pub fn new(raw: &Path, qmap: &Path, out_dir: &Path, mode: Mode) -> Self {
        Options {
            raw: raw.to_path_buf(),
            qmap: qmap.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            meta: None,
            mode,
            begin: 0,
            end: None,
            stride: 1,
            avg: 1,
            dq_selection: None,
            max_memory: 4 << 30,
            overwrite: false,
            plots: true,
            normalize_frame: false,
            backend: Backend::Cpu,
        }
    }
}

/// Where an analysis is, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub stage: &'static str,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug)]
pub enum PipelineError {
    /// The progress callback asked to stop.
    Cancelled,
    Failed(String),
}

impl From<String> for PipelineError {
    fn from(s: String) -> Self {
        PipelineError::Failed(s)
    }
}

/// The fit of one dynamic bin.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BinFit {
    pub dq: u32,
    /// Å⁻¹.
    pub q: f64,
    pub pixels: usize,
    /// g2 = baseline + beta · exp(−2 gamma τ), gamma in 1/s.
    pub gamma: f64,
    pub beta: f64,
    pub baseline: f64,
    pub chi2: f64,
    /// 1 ≤ 1/(2Γ·t0) ≤ N/20: the decay lies inside the measured delays.
    pub resolved: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub read_correlate_s: f64,
    pub twotime_s: f64,
    pub write_s: f64,
    pub total_s: f64,
}

/// The JSON summary a flow publishes.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub raw: PathBuf,
    pub results: PathBuf,
    pub mode: &'static str,
    /// Frames correlated (after stride and averaging).
    pub frames: usize,
    pub raw_frames: usize,
    /// Seconds between correlated frames (frame time · stride · avg).
    pub t0: f64,
    pub detector: [usize; 2],
    pub pixels: usize,
    pub q_min: f64,
    pub q_max: f64,
    /// Multi-tau fits per dynamic bin (empty for two-time only).
    pub fits: Vec<BinFit>,
    /// Γ = D q² through the origin over the resolved bins, Å²/s.
    pub diffusion: Option<f64>,
    /// Mean β over the resolved bins.
    pub beta: Option<f64>,
    pub twotime_bins: Vec<u32>,
    /// Correlated pixel-frames per second of the first pass.
    pub pixel_frames_per_s: f64,
    /// Where multi-tau ran: "cpu", "torch:cpu", "torch:cuda:0", …
    pub device: String,
    /// Why it did not run where asked (a GPU asked for and none visible).
    pub device_note: Option<String>,
    /// Frames asked for that the file does not have (an end past its last).
    pub frames_note: Option<String>,
    pub timings: Timings,
    pub plots: Vec<PathBuf>,
    /// Why the figures are missing, when they are.
    pub plot_error: Option<String>,
}

/// Everything an analysis produced.
pub struct Outcome {
    pub summary: Summary,
    pub summary_path: PathBuf,
    pub multitau: Option<G2Result>,
}

/// Which raw frames make which correlated frame.
#[derive(Clone, Copy, Debug)]
struct FramePlan {
    begin: usize,
    stride: usize,
    avg: usize,
    /// Correlated frames.
    n: usize,
}

impl FramePlan {
    fn new(opts: &Options, raw_frames: usize, raw: &Path) -> Result<Self, String> {
        let end = opts.end.unwrap_or(raw_frames).min(raw_frames);
        if opts.stride == 0 || opts.avg == 0 {
            return Err("stride and avg must be at least 1".into());
        }
        if opts.begin >= end {
            return Err(format!(
                "{}: frame range {}..{end} is empty (the file has {raw_frames} frames)",
                raw.display(),
                opts.begin
            ));
        }
        let per = opts
            .stride
            .checked_mul(opts.avg)
            .ok_or("stride × avg overflows")?;
        let n = (end - opts.begin) / per;
        if n < 10 {
            return Err(format!(
                "{}: {n} frames after begin {}, end {end}, stride {}, avg {}; at least 10 are needed",
                raw.display(),
                opts.begin,
                opts.stride,
                opts.avg
            ));
        }
        Ok(FramePlan {
            begin: opts.begin,
            stride: opts.stride,
            avg: opts.avg,
            n,
        })
    }
    fn raw_per_frame(&self) -> usize {
        self.stride * self.avg
    }
}

/// Correlated frames as the reader hands them over: the file's counts when
/// no averaging is needed, else f32 means.
enum Batch {
    Counts(Frames),
    Means(Vec<f32>),
}

impl Batch {
    fn value(&self, i: usize) -> f32 {
        match self {
            Batch::Counts(f) => f.get(i),
            Batch::Means(v) => v[i],
        }
    }
    /// The values at `pixels` of `count` frames of `px` values, frame-major.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    fn gather(&self, count: usize, px: usize, pixels: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; count * pixels.len()];
        out.par_chunks_mut(pixels.len().max(1))
            .enumerate()
            .for_each(|(t, row)| {
                for (r, &p) in row.iter_mut().zip(pixels) {
                    *r = self.value(t * px + p);
                }
            });
        out
    }
}

pub use crate::backend::Backend;

/// A multi-tau correlator of either backend over the valid pixels.
enum Correlator {
    Cpu(Multitau),
    #[cfg(feature = "torch")]
    Torch(super::torch::TorchMultitau),
}

impl Correlator {
    /// The correlator for `backend`, its device name, and why it is not the
    /// device asked for (if it is not).
    fn new(
        backend: &Backend,
        n: usize,
        px: usize,
        pixels: &[usize],
    ) -> Result<(Self, String, Option<String>), String> {
        match backend {
            Backend::Cpu => Ok((
                Correlator::Cpu(Multitau::masked(n as u64, px, pixels.to_vec())),
                "cpu".into(),
                None,
            )),
            #[cfg(feature = "torch")]
            Backend::Torch { device } => {
                let (d, why) = super::torch::device(device)?;
                Ok((
                    Correlator::Torch(super::torch::TorchMultitau::new(n as u64, pixels.len(), d)),
                    super::torch::device_name(d),
                    why,
                ))
            }
            #[cfg(not(feature = "torch"))]
            Backend::Torch { .. } => Err(
                "the torch backend is not in this build (built without the `torch` feature)".into(),
            ),
        }
    }

    #[cfg_attr(not(feature = "torch"), allow(unused_variables))]
    fn push(&mut self, b: &Batch, count: usize, px: usize, pixels: &[usize]) -> Result<(), String> {
        match self {
            Correlator::Cpu(mt) => match b {
                Batch::Counts(Frames::U8(v)) => mt.push(v),
                Batch::Counts(Frames::U16(v)) => mt.push(v),
                Batch::Counts(Frames::U32(v)) => mt.push(v),
                Batch::Means(v) => mt.push(v),
            },
            #[cfg(feature = "torch")]
            Correlator::Torch(t) => t.push(&b.gather(count, px, pixels)),
        }
    }

    fn finish(self) -> Result<PixelSums, String> {
        match self {
            Correlator::Cpu(mt) => mt.finish(),
            #[cfg(feature = "torch")]
            Correlator::Torch(t) => t.finish(),
        }
    }
}

/// Reads correlated frames `first..first + count` (stride and averaging applied).
fn read_batch(
    src: &dyn FrameSource,
    plan: &FramePlan,
    first: usize,
    count: usize,
) -> Result<Batch, String> {
    let per = plan.raw_per_frame();
    let start = plan.begin + first * per;
    if per == 1 {
        return Ok(Batch::Counts(src.read_frames(start, count)?));
    }
    let (_, h, w) = src.shape();
    let px = h * w;
    // Only up to the last frame used: the final stride gap is not read.
    let raw = src.read_frames(start, (count * plan.avg - 1) * plan.stride + 1)?;
    let mut out = vec![0f32; count * px];
    // Sequential: this runs on the reader thread, beside the correlator,
    // and rayon here would use the global pool, not the step's cores.
    out.chunks_mut(px).enumerate().for_each(|(j, frame)| {
        for a in 0..plan.avg {
            let base = (j * plan.avg + a) * plan.stride * px;
            for (i, v) in frame.iter_mut().enumerate() {
                *v += raw.get(base + i);
            }
        }
        let inv = 1.0 / plan.avg as f32;
        frame.iter_mut().for_each(|v| *v *= inv);
    });
    Ok(Batch::Means(out))
}

/// Each frame of `batch` divided by its mean over `pixels` (a mean ≤ 0
/// counts as 1); only `pixels` are filled in.
fn normalize_frames(batch: &Batch, px: usize, count: usize, pixels: &[usize]) -> Batch {
    let mut out = vec![0f32; count * px];
    out.par_chunks_mut(px).enumerate().for_each(|(t, frame)| {
        let base = t * px;
        let sum: f64 = pixels
            .iter()
            .map(|&p| f64::from(batch.value(base + p)))
            .sum();
        let mean = sum / pixels.len().max(1) as f64;
        let inv = if mean > 0.0 { (1.0 / mean) as f32 } else { 1.0 };
        for &p in pixels {
            frame[p] = batch.value(base + p) * inv;
        }
    });
    Batch::Means(out)
}

/// Bytes of raw data per read: 128 frames at 512² uint16. Larger pushes
/// amortise the correlator's per-push work (history prologue, dispatch).
const BATCH_BYTES: usize = 64 << 20;

/// Streams every correlated frame once, in batches, through `consume`.
fn stream(
    src: &dyn FrameSource,
    plan: &FramePlan,
    stage: &'static str,
    progress: &mut dyn FnMut(Progress) -> bool,
    mut consume: impl FnMut(&Batch, usize) -> Result<(), String>,
) -> Result<(), PipelineError> {
    let (_, h, w) = src.shape();
    let px = h * w;
    let per_batch = (BATCH_BYTES / (px * 2 * plan.raw_per_frame()).max(1)).clamp(1, 256);
    let n = plan.n;
    std::thread::scope(|s| -> Result<(), PipelineError> {
        let (tx, rx) = sync_channel::<Result<(usize, Batch), String>>(2);
        s.spawn(move || {
            let mut first = 0;
            while first < n {
                let count = per_batch.min(n - first);
                let b = read_batch(src, plan, first, count).map(|b| (count, b));
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return;
                }
                first += count;
            }
        });
        let mut done = 0usize;
        for msg in rx {
            let (count, batch) = msg?;
            consume(&batch, count)?;
            done += count;
            if !progress(Progress {
                stage,
                done: done as u64,
                total: n as u64,
            }) {
                // Dropping the receiver stops the reader at its next send.
                return Err(PipelineError::Cancelled);
            }
        }
        if done != n {
            return Err(PipelineError::Failed(format!(
                "{}: reader stopped after {done} of {n} frames",
                src.path().display()
            )));
        }
        Ok(())
    })
}

/// Per-pixel sums over time segments for `scattering_1d_segments`, and
/// per-pixel totals and per-frame means when multi-tau does not give them.
/// Segments hold the mean per frame (the reference divides the segment sums
/// by N instead, which scales its profiles by 1/segments; the shape is the
/// same).
struct Averages {
    pixels: Vec<usize>,
    seg_len: usize,
    n_seg: usize,
    current: Vec<f64>,
    /// Mean per pixel of each finished segment.
    segments: Vec<Vec<f64>>,
    total: Vec<f64>,
    intensity: Option<Vec<f64>>,
    seen: usize,
}

impl Averages {
    /// `(segments, frames per segment)`; `totals` also keeps per-pixel
    /// totals and intensity vs time.
    fn new(pixels: Vec<usize>, (n_seg, seg_len): (usize, usize), totals: bool) -> Self {
        let p = pixels.len();
        Averages {
            pixels,
            seg_len: seg_len.max(1),
            n_seg,
            current: vec![0.0; p],
            segments: Vec::new(),
            total: if totals { vec![0.0; p] } else { Vec::new() },
            intensity: totals.then(Vec::new),
            seen: 0,
        }
    }

    /// Multi-tau: segments of 2^L frames, the smallest L with N / 2^L ≤ 16
    /// (the reference's level-L frames).
    fn multitau_segments(n: usize) -> (usize, usize) {
        let mut len = 1;
        while n / len > 16 {
            len *= 2;
        }
        (n / len, len)
    }

    /// Adds `count` frames: totals and intensity from `batch`, segment
    /// sums from `seg` (the normalised frames) when given.
    fn add(&mut self, batch: &Batch, seg: Option<&Batch>, count: usize, px: usize) {
        const BLOCK: usize = 4096;
        let seg = seg.unwrap_or(batch);
        for t in 0..count {
            let base = t * px;
            let pixels = &self.pixels;
            let in_segment = self.segments.len() < self.n_seg;
            if in_segment {
                self.current
                    .par_chunks_mut(BLOCK)
                    .zip(pixels.par_chunks(BLOCK))
                    .for_each(|(cur, idx)| {
                        for (c, &p) in cur.iter_mut().zip(idx) {
                            *c += f64::from(seg.value(base + p));
                        }
                    });
            }
            if let Some(it) = &mut self.intensity {
                let sum: f64 = self
                    .total
                    .par_chunks_mut(BLOCK)
                    .zip(pixels.par_chunks(BLOCK))
                    .map(|(tot, idx)| {
                        let mut s = 0.0;
                        for (to, &p) in tot.iter_mut().zip(idx) {
                            let v = f64::from(batch.value(base + p));
                            *to += v;
                            s += v;
                        }
                        s
                    })
                    .sum();
                it.push(sum / pixels.len().max(1) as f64);
            }
            self.seen += 1;
            if in_segment && self.seen.is_multiple_of(self.seg_len) {
                let inv = 1.0 / self.seg_len as f64;
                self.segments
                    .push(self.current.iter().map(|&v| v * inv).collect());
                self.current.iter_mut().for_each(|v| *v = 0.0);
            }
        }
    }
}

/// One rank's multi-tau sums as a flat buffer (what [`Collective::gather_f64`]
/// carries): g2, ip, if (delays × pixels, row major), the pixel means, then
/// the frame intensities.
fn flatten(s: &PixelSums) -> Vec<f64> {
    let mut v = Vec::with_capacity(3 * s.g2.len() + s.mean.len() + s.intensity_vs_time.len());
    for a in [&s.g2, &s.ip, &s.if_] {
        v.extend(a.iter().copied());
    }
    v.extend(&s.mean);
    v.extend(&s.intensity_vs_time);
    v
}

/// The inverse of [`flatten`], given what every rank shares.
fn unflatten(v: &[f64], delays: &[Delay], frames: u64, times: usize) -> Result<PixelSums, String> {
    let d = delays.len();
    let per_pixel = 3 * d + 1;
    let body = v
        .len()
        .checked_sub(times)
        .filter(|b| b % per_pixel == 0)
        .ok_or_else(|| format!("a rank sent {} values, not 3·{d}·P + P + {times}", v.len()))?;
    let p = body / per_pixel;
    let block = |i: usize| {
        Array2::from_shape_vec((d, p), v[i * d * p..(i + 1) * d * p].to_vec())
            .map_err(|e| e.to_string())
    };
    Ok(PixelSums {
        g2: block(0)?,
        ip: block(1)?,
        if_: block(2)?,
        mean: v[3 * d * p..3 * d * p + p].to_vec(),
        intensity_vs_time: v[3 * d * p + p..].to_vec(),
        delays: delays.to_vec(),
        frames,
    })
}

/// The ranks' multi-tau sums (each over its share of the pixels) gathered
/// to rank 0 and merged there ([`PixelSums::merge`]); `None` elsewhere.
fn combine(ranks: &dyn Collective, mine: PixelSums) -> Result<Option<PixelSums>, String> {
    let Some(parts) = ranks.gather_f64(&flatten(&mine))? else {
        return Ok(None);
    };
    let times = mine.intensity_vs_time.len();
    let shares = parts
        .iter()
        .map(|v| unflatten(v, &mine.delays, mine.frames, times))
        .collect::<Result<Vec<_>, _>>()?;
    PixelSums::merge(shares).map(Some)
}

/// Runs one analysis. `progress` is called after every batch; returning
/// false cancels.
pub fn run(
    opts: &Options,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Outcome, PipelineError> {
    run_shared(opts, progress, None).map(|o| o.expect("a lone process writes the results"))
}

/// [`run`] as one of the processes of `share` (MPI ranks): each correlates
/// a contiguous share of the valid pixels ([`share_of`]) — every pixel is
/// correlated on its own, so the split changes no number — and rank 0
/// gathers and merges the sums and writes the results (and returns
/// `Some`), exactly as one process would; the others return `None`.
pub fn run_shared(
    opts: &Options,
    progress: &mut dyn FnMut(Progress) -> bool,
    share: Option<&dyn Collective>,
) -> Result<Option<Outcome>, PipelineError> {
    let t_start = Instant::now();
    let src = open_frames(&opts.raw)?;
    let (raw_frames, height, width) = src.shape();
    let qmap = read_qmap(&opts.qmap)?;
    if (qmap.height, qmap.width) != (height, width) {
        return Err(PipelineError::Failed(format!(
            "{}: /qmap/dynamic_roi_map is {}x{} (height x width) but the frames of {} are {}x{}",
            opts.qmap.display(),
            qmap.height,
            qmap.width,
            opts.raw.display(),
            height,
            width
        )));
    }
    let meta = match &opts.meta {
        Some(m) => m.clone(),
        None => super::io::find_metadata(&opts.raw)?,
    };
    let frame_time = read_frame_time(&meta)?;
    let plan = FramePlan::new(opts, raw_frames, &opts.raw)?;
    let n = plan.n;
    let frames_note = opts.end.filter(|&e| e > raw_frames).map(|e| {
        format!(
            "{}: end {e} is past the file's {raw_frames} frames; frames {}..{raw_frames} were used",
            opts.raw.display(),
            opts.begin
        )
    });
    let px = height * width;
    let pixels = qmap.valid_pixels();
    if pixels.is_empty() {
        return Err(PipelineError::Failed(format!(
            "{}: /qmap/mask selects no pixels",
            opts.qmap.display()
        )));
    }
    if share.is_some() && opts.mode.twotime() {
        return Err(PipelineError::Failed(
            "two-time is not shared between processes: run it in one (without --mpi)".into(),
        ));
    }
    let mine = match share {
        Some(s) => pixels[share_of(pixels.len(), s.rank(), s.size())].to_vec(),
        None => pixels.clone(),
    };
    let leader = share.is_none_or(|s| s.rank() == 0);
    let twotime_plan = if opts.mode.twotime() {
        Some(
            TwotimePlan::new(&qmap, opts.dq_selection.as_deref())
                .map_err(|e| PipelineError::Failed(format!("{}: {e}", opts.qmap.display())))?,
        )
    } else {
        None
    };
    // Each two-time map is N × N f32 on top of the frame store.
    let map_bytes = n.saturating_mul(n).saturating_mul(4);
    if twotime_plan.is_some() && map_bytes > opts.max_memory {
        return Err(PipelineError::Failed(format!(
            "{}: a two-time map of {n} frames needs {:.1} GB, over the {:.1} GB memory budget; select fewer frames (begin/end, stride, avg)",
            opts.raw.display(),
            map_bytes as f64 / 1e9,
            opts.max_memory as f64 / 1e9
        )));
    }
    let mut groups = twotime_plan
        .as_ref()
        .map(|p| p.batches(n, opts.max_memory - map_bytes))
        .unwrap_or_default()
        .into_iter();

    // Pass 1: multi-tau, the averages, and the first two-time group.
    let segments = if opts.mode.multitau() {
        Averages::multitau_segments(n)
    } else {
        (10, n / 10)
    };
    // Multi-tau gives the per-pixel means and intensity vs time, unless it
    // sees normalised frames.
    let own_totals = !opts.mode.multitau() || opts.normalize_frame;
    let mut averages = Averages::new(pixels.clone(), segments, own_totals);
    let (mut mt, device, device_note) = if opts.mode.multitau() {
        let (c, d, why) = Correlator::new(&opts.backend, n, px, &mine)?;
        (Some(c), d, why)
    } else {
        (None, "cpu".to_string(), None)
    };
    let mut collector = groups.next().map(|g| Collector::new(g, n));
    let t_pass = Instant::now();
    stream(
        src.as_ref(),
        &plan,
        "correlating",
        progress,
        |batch, count| {
            let normalized = (opts.normalize_frame && mt.is_some())
                .then(|| normalize_frames(batch, px, count, &pixels));
            if let Some(mt) = &mut mt {
                mt.push(normalized.as_ref().unwrap_or(batch), count, px, &mine)?;
            }
            if leader {
                averages.add(batch, normalized.as_ref(), count, px);
            }
            if let Some(c) = &mut collector {
                for t in 0..count {
                    c.push(|i| batch.value(t * px + i))?;
                }
            }
            Ok(())
        },
    )?;
    let mut sums = mt.map(|m| m.finish()).transpose()?;
    if let Some(s) = share {
        if let Some(local) = sums.take() {
            match combine(s, local)? {
                Some(all) => sums = Some(all),
                None => return Ok(None),
            }
        }
    }
    let pass_s = t_pass.elapsed().as_secs_f64();

    let path = results_path(&opts.out_dir, &opts.raw, opts.overwrite);
    let writer = ResultsWriter::create(&path, &meta, &opts.qmap, &opts.raw)?;
    let t_write = Instant::now();
    let (mean, intensity) = match &sums {
        Some(s) if !own_totals => (s.mean.clone(), s.intensity_vs_time.clone()),
        _ => (
            averages.total.iter().map(|&v| v / n as f64).collect(),
            averages.intensity.clone().unwrap_or_default(),
        ),
    };
    let img = saxs_2d(&mean, &pixels, &qmap);
    let prof = saxs_1d(&img, &qmap);
    let seg_rows: Vec<Vec<f32>> = averages
        .segments
        .iter()
        .map(|seg| {
            saxs_1d(&saxs_2d(seg, &pixels, &qmap), &qmap)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        })
        .collect();
    let mut segments = Array2::<f32>::zeros((seg_rows.len(), prof.len()));
    for (r, row) in seg_rows.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            segments[[r, c]] = v;
        }
    }
    let prof_values: Vec<f32> = prof.iter().map(|&(_, v)| v).collect();
    writer.averages(img.view(), &prof_values, segments.view(), &intensity)?;
    let config = |kind: &str| -> Vec<(&'static str, ConfigValue)> {
        vec![
            ("analysis_type", ConfigValue::Text(kind.to_string())),
            ("begin_frame", ConfigValue::Int(plan.begin as i64)),
            (
                "end_frame",
                ConfigValue::Int((plan.begin + n * plan.raw_per_frame()) as i64),
            ),
            ("stride_frame", ConfigValue::Int(plan.stride as i64)),
            ("avg_frame", ConfigValue::Int(plan.avg as i64)),
            (
                "normalize_frame",
                ConfigValue::Int(i64::from(opts.normalize_frame && kind == "Multitau")),
            ),
            ("smooth", ConfigValue::Text("sqmap".into())),
            ("qmap", ConfigValue::Text(opts.qmap.display().to_string())),
            ("frame_time", ConfigValue::Float(frame_time)),
            (
                "correlator",
                ConfigValue::Text(format!("beamflow {}", env!("CARGO_PKG_VERSION"))),
            ),
        ]
    };
    let t0 = frame_time * plan.raw_per_frame() as f64;
    let mut g2_result = None;
    let mut fits = Vec::new();
    if let Some(s) = &sums {
        let g = normalize(s, &qmap, &pixels);
        writer.multitau(&g.tau, g.g2.view(), g.g2_err.view(), &config("Multitau"))?;
        fits = fit_bins(&g, &qmap, &pixels, t0, n);
        g2_result = Some(g);
    }
    let mut write_s = t_write.elapsed().as_secs_f64();

    // Two-time: the first group's frames are collected; the rest take passes.
    let t_two = Instant::now();
    let mut twotime_bins = Vec::new();
    if twotime_plan.is_some() {
        let n_dq = qmap.n_dq();
        let mut g2 = Array2::<f32>::zeros((n, n_dq));
        let mut seg = Array3::<f32>::zeros((n / 5, 5, n_dq));
        let mut number = 0;
        let mut sink = |r: super::twotime::BinResult| -> Result<(), String> {
            number += 1;
            writer.twotime_map(number, r.c2.view())?;
            let d = r.dq as usize - 1;
            for (lag, &v) in r.g2.iter().enumerate() {
                g2[[lag, d]] = v;
            }
            for ((lag, b), &v) in r.segments.indexed_iter() {
                seg[[lag, b, d]] = v;
            }
            twotime_bins.push(r.dq);
            Ok(())
        };
        if let Some(c) = collector.take() {
            c.correlate(&mut sink)?;
        }
        // Bins whose frames did not fit the budget with the first group.
        for group in groups.by_ref() {
            let mut c = Collector::new(group, n);
            stream(
                src.as_ref(),
                &plan,
                "two-time pass",
                progress,
                |batch, count| {
                    for t in 0..count {
                        c.push(|i| batch.value(t * px + i))?;
                    }
                    Ok(())
                },
            )?;
            c.correlate(&mut sink)?;
        }
        let bins: Vec<i32> = twotime_bins.iter().map(|&d| d as i32).collect();
        writer.twotime(g2.view(), &seg, &bins, &config("Twotime"))?;
    }
    let twotime_s = t_two.elapsed().as_secs_f64();
    let t_fin = Instant::now();
    let results = writer.finish()?;
    write_s += t_fin.elapsed().as_secs_f64();

    // The results are final by now: a figure that cannot be drawn (no font,
    // nothing to plot) is reported in the summary, not a failed analysis.
    let (plots, plot_error) = if opts.plots {
        match plot::figures(&results, &opts.out_dir, &fits) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        }
    } else {
        (Vec::new(), None)
    };
    let stem = results
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let resolved: Vec<&BinFit> = fits.iter().filter(|f| f.resolved).collect();
    let (num, den) = resolved.iter().fold((0.0, 0.0), |(a, b), f| {
        let q2 = f.q * f.q;
        (a + f.gamma * q2, b + q2 * q2)
    });
    let qs: Vec<f64> = qmap
        .dq_values
        .iter()
        .copied()
        .filter(|q| q.is_finite())
        .collect();
    let summary = Summary {
        raw: opts.raw.clone(),
        results,
        mode: opts.mode.label(),
        frames: n,
        raw_frames,
        t0,
        detector: [height, width],
        pixels: pixels.len(),
        q_min: qs.iter().copied().fold(f64::INFINITY, f64::min),
        q_max: qs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        diffusion: (den > 0.0).then(|| num / den),
        beta: (!resolved.is_empty())
            .then(|| resolved.iter().map(|f| f.beta).sum::<f64>() / resolved.len() as f64),
        fits,
        twotime_bins,
        pixel_frames_per_s: (pixels.len() * n) as f64 / pass_s.max(1e-9),
        device,
        device_note,
        frames_note,
        timings: Timings {
            read_correlate_s: pass_s,
            twotime_s,
            write_s,
            total_s: t_start.elapsed().as_secs_f64(),
        },
        plots,
        plot_error,
    };
    let summary_path = opts.out_dir.join(format!("{stem}_summary.json"));
    let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
    std::fs::write(&summary_path, text)
        .map_err(|e| format!("{}: cannot write: {e}", summary_path.display()))?;
    Ok(Some(Outcome {
        summary,
        summary_path,
        multitau: g2_result,
    }))
}

/// Fits every non-empty dynamic bin; τ in seconds.
fn fit_bins(g: &G2Result, qmap: &QMap, pixels: &[usize], t0: f64, n: usize) -> Vec<BinFit> {
    let tau_s: Vec<f64> = g.tau.iter().map(|&t| t as f64 * t0).collect();
    let mut count = vec![0usize; qmap.n_dq() + 1];
    for &p in pixels {
        count[qmap.dqmap[p] as usize] += 1;
    }
    (1..=qmap.n_dq())
        .filter(|&d| count[d] > 1)
        .filter_map(|d| {
            let col = |a: &Array2<f32>| -> Vec<f64> {
                a.column(d - 1).iter().map(|&x| f64::from(x)).collect()
            };
            let ExpFit {
                baseline,
                beta,
                gamma,
                chi2,
            } = fit_g2(&tau_s, &col(&g.g2), &col(&g.g2_err))?;
            let decay = 1.0 / (2.0 * gamma * t0);
            Some(BinFit {
                dq: d as u32,
                q: qmap.dq_values.get(d - 1).copied().unwrap_or(f64::NAN),
                pixels: count[d],
                gamma,
                beta,
                baseline,
                chi2,
                resolved: gamma.is_finite() && (1.0..=n as f64 / 20.0).contains(&decay),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_survives_the_flat_buffer() {
        let delays = super::super::delay_grid(40);
        let d = delays.len();
        let sums = || PixelSums {
            g2: Array2::from_shape_fn((d, 3), |(i, j)| (i * 10 + j) as f64),
            ip: Array2::from_shape_fn((d, 3), |(i, j)| (i + j) as f64 * 0.5),
            if_: Array2::from_shape_fn((d, 3), |(i, j)| (i * j) as f64),
            mean: vec![1.0, 2.0, 3.0],
            intensity_vs_time: (0..40).map(f64::from).collect(),
            delays: delays.clone(),
            frames: 40,
        };
        let s = sums();
        let back = unflatten(&flatten(&s), &delays, 40, 40).unwrap();
        assert_eq!((&back.g2, &back.ip, &back.if_), (&s.g2, &s.ip, &s.if_));
        assert_eq!(
            (&back.mean, &back.intensity_vs_time),
            (&s.mean, &s.intensity_vs_time)
        );
        assert!(unflatten(&[1.0; 7], &delays, 40, 40).is_err());
        // A world of one merges its own share into the same sums.
        let one = combine(&crate::ranks::Solo, sums()).unwrap().unwrap();
        assert_eq!((&one.g2, &one.ip, &one.if_), (&s.g2, &s.ip, &s.if_));
        assert_eq!(
            (&one.mean, &one.intensity_vs_time),
            (&s.mean, &s.intensity_vs_time)
        );
    }
}
