//! The XPCS kernels as flow steps (`kernel = "xpcs.multitau"` …): JSON
//! parameters in, JSON outputs a later step or the catalog can use out.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::io::{open_frames, read_frame_time};
use super::pipeline::{self, parse_selection, Mode, Options, PipelineError, Summary};
use super::plot;
use crate::ranks::Collective;
use crate::registry::{param_f64, Kernel, KernelContext, KernelError};
use crate::synthetic::xpcs::{write_dataset, SpeckleConfig};

fn text<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, KernelError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(KernelError::param(
            name,
            format!("expected a string, got {v}"),
        )),
    }
}

fn path(params: &Value, name: &str) -> Result<PathBuf, KernelError> {
    text(params, name)?
        .map(PathBuf::from)
        .ok_or_else(|| KernelError::param(name, "required"))
}

fn count(params: &Value, name: &str, default: usize) -> Result<usize, KernelError> {
    let x = param_f64(params, name, default as f64)?;
    if x.fract() != 0.0 {
        return Err(KernelError::param(
            name,
            format!("expected a whole number, got {x}"),
        ));
    }
    Ok(x as usize)
}

fn flag(params: &Value, name: &str) -> Result<bool, KernelError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(v) => Err(KernelError::param(
            name,
            format!("expected true or false, got {v}"),
        )),
    }
}

/// The analysis options from step parameters shared by both correlations.
fn options(params: &Value, ctx: &KernelContext, mode: Mode) -> Result<Options, KernelError> {
    let out = match text(params, "out")? {
        Some(p) => PathBuf::from(p),
        None => ctx.ensure_work_dir()?.to_path_buf(),
    };
    let mut o = Options::new(&path(params, "raw")?, &path(params, "qmap")?, &out, mode);
    o.meta = text(params, "meta")?.map(PathBuf::from);
    o.begin = count(params, "begin", 0)?;
    o.end = match params.get("end") {
        None | Some(Value::Null) => None,
        Some(_) => Some(count(params, "end", 0)?),
    };
    o.stride = count(params, "stride", 1)?;
    o.avg = count(params, "avg", 1)?;
    o.overwrite = flag(params, "overwrite")?;
    o.plots = !flag(params, "no_plots")?;
    o.normalize_frame = flag(params, "normalize_frame")?;
    // `auto` (the default): torch on the granted GPU when the pilot granted
    // one, else the native CPU kernel.
    o.backend = match text(params, "backend")?.unwrap_or("auto") {
        "auto" => match crate::backend::granted_device("auto", &ctx.gpus).as_str() {
            "cpu" => pipeline::Backend::Cpu,
            gpu => pipeline::Backend::Torch { device: gpu.into() },
        },
        b => pipeline::Backend::parse(b).map_err(|e| KernelError::param("backend", e))?,
    };
    if let Some(sel) = text(params, "dq")? {
        o.dq_selection = Some(parse_selection(sel).map_err(|e| KernelError::param("dq", e))?);
    }
    let gb = param_f64(params, "max_memory_gb", 4.0)?;
    o.max_memory = (gb * (1u64 << 30) as f64) as usize;
    Ok(o)
}

fn analyse(params: &Value, ctx: &KernelContext, mode: Mode) -> Result<Value, KernelError> {
    let opts = options(params, ctx, mode)?;
    let res = ctx.on_granted_cores(|| pipeline::run(&opts, &mut |_| !ctx.cancelled()))?;
    let out = match res {
        Ok(o) => o,
        Err(PipelineError::Cancelled) => return Err(KernelError::Cancelled),
        Err(PipelineError::Failed(e)) => return Err(KernelError::Failed(e)),
    };
    Ok(outputs(&out.summary, &out.summary_path))
}

/// The outputs of an analysis step: file paths plus the numbers a catalog
/// record carries.
fn outputs(s: &Summary, summary_path: &Path) -> Value {
    let find = |suffix: &str| {
        s.plots
            .iter()
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .map(|p| p.display().to_string())
    };
    json!({
        "results": s.results.display().to_string(),
        "summary": summary_path.display().to_string(),
        "frames": s.frames,
        "t0": s.t0,
        "q_min": s.q_min,
        "q_max": s.q_max,
        "diffusion": s.diffusion,
        "beta_mean": s.beta,
        "gamma": s.fits.iter().map(|f| f.gamma).collect::<Vec<_>>(),
        "beta": s.fits.iter().map(|f| f.beta).collect::<Vec<_>>(),
        "q": s.fits.iter().map(|f| f.q).collect::<Vec<_>>(),
        "dq": s.fits.iter().map(|f| f.dq).collect::<Vec<_>>(),
        "bins": s.twotime_bins,
        "pixel_frames_per_s": s.pixel_frames_per_s,
        "seconds": s.timings.total_s,
        "plots": s.plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "plot_error": s.plot_error,
        "g2_png": find("_g2.png"),
        "thumbnails": s.plots.iter().filter(|p| p.to_string_lossy().ends_with("_thumb.png"))
            .map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "device": s.device,
        "device_note": s.device_note,
    })
}

const ANALYSIS_PARAMS: &[&str] = &[
    "raw",
    "qmap",
    "meta",
    "out",
    "begin",
    "end",
    "stride",
    "avg",
    "overwrite",
    "no_plots",
    "normalize_frame",
    "backend",
    "dq",
    "max_memory_gb",
];
const ANALYSIS_OUTPUTS: &[&str] = &[
    "results",
    "summary",
    "frames",
    "t0",
    "q_min",
    "q_max",
    "diffusion",
    "beta_mean",
    "beta",
    "gamma",
    "q",
    "dq",
    "bins",
    "pixel_frames_per_s",
    "seconds",
    "plots",
    "g2_png",
    "thumbnails",
    "plot_error",
    "device",
    "device_note",
];

/// Multi-tau g2 per q bin, averages, fits and figures.
pub struct MultitauStep;

impl Kernel for MultitauStep {
    fn name(&self) -> &'static str {
        "xpcs.multitau"
    }
    fn summary(&self) -> &'static str {
        "XPCS multi-tau g2 per q from raw frames + qmap: results HDF5 (viewer layout), fits, plots"
    }
    fn outputs(&self) -> &'static [&'static str] {
        ANALYSIS_OUTPUTS
    }
    fn params(&self) -> &'static [&'static str] {
        ANALYSIS_PARAMS
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        analyse(params, ctx, Mode::Multitau)
    }
    fn spans_nodes(&self) -> bool {
        true
    }
    /// Each rank correlates a share of the pixels on the process's global
    /// thread pool (one process per rank); rank 0 merges and writes.
    fn run_shared(
        &self,
        params: &Value,
        ctx: &KernelContext,
        world: &dyn Collective,
    ) -> Result<Value, KernelError> {
        let opts = options(params, ctx, Mode::Multitau)?;
        let res = pipeline::run_shared(&opts, &mut |_| !ctx.cancelled(), Some(world));
        let mut out = match res {
            Ok(Some(o)) => outputs(&o.summary, &o.summary_path),
            Ok(None) => json!({}),
            Err(PipelineError::Cancelled) => return Err(KernelError::Cancelled),
            Err(PipelineError::Failed(e)) => return Err(KernelError::Failed(e)),
        };
        out["ranks"] = json!(world.size());
        Ok(out)
    }
}

/// Two-time C(t1, t2) per selected q bin.
pub struct TwotimeStep;

impl Kernel for TwotimeStep {
    fn name(&self) -> &'static str {
        "xpcs.twotime"
    }
    fn summary(&self) -> &'static str {
        "XPCS two-time correlation per q bin (dq selection, memory budget): results HDF5, maps"
    }
    fn outputs(&self) -> &'static [&'static str] {
        ANALYSIS_OUTPUTS
    }
    fn params(&self) -> &'static [&'static str] {
        ANALYSIS_PARAMS
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        analyse(params, ctx, Mode::Twotime)
    }
}

/// What a raw file holds, read before committing compute to it.
pub struct MetadataStep;

impl Kernel for MetadataStep {
    fn name(&self) -> &'static str {
        "xpcs.metadata"
    }
    fn summary(&self) -> &'static str {
        "reads an XPCS raw file's shape and pixel type and the metadata file's frame time"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "frames",
            "height",
            "width",
            "bytes",
            "frame_time",
            "metadata",
        ]
    }
    fn params(&self) -> &'static [&'static str] {
        &["raw", "meta"]
    }
    fn run(&self, params: &Value, _ctx: &KernelContext) -> Result<Value, KernelError> {
        let raw = path(params, "raw")?;
        let (frames, height, width) = open_frames(&raw).map_err(KernelError::Failed)?.shape();
        let meta = match text(params, "meta")? {
            Some(m) => PathBuf::from(m),
            None => pipeline::find_metadata(&raw).map_err(KernelError::Failed)?,
        };
        let frame_time = read_frame_time(&meta).map_err(KernelError::Failed)?;
        let bytes = std::fs::metadata(&raw).map(|m| m.len()).unwrap_or(0);
        Ok(json!({
            "frames": frames,
            "height": height,
            "width": width,
            "bytes": bytes,
            "frame_time": frame_time,
            "metadata": meta.display().to_string(),
        }))
    }
}

/// Figures and thumbnails of a results file.
pub struct PlotStep;

impl Kernel for PlotStep {
    fn name(&self) -> &'static str {
        "xpcs.plot"
    }
    fn summary(&self) -> &'static str {
        "PNG figures of an XPCS results file: g2 per q with fits, SAXS image, two-time map, thumbnails"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["plots", "thumbnails"]
    }
    fn params(&self) -> &'static [&'static str] {
        &["results", "summary", "out"]
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let results = path(params, "results")?;
        let fits = match text(params, "summary")? {
            Some(p) => {
                let s = std::fs::read_to_string(p)
                    .map_err(|e| KernelError::Failed(format!("{p}: cannot read: {e}")))?;
                let v: Value = serde_json::from_str(&s)
                    .map_err(|e| KernelError::Failed(format!("{p}: not JSON: {e}")))?;
                serde_json::from_value(v["fits"].clone())
                    .map_err(|e| KernelError::Failed(format!("{p}: fits: {e}")))?
            }
            None => Vec::new(),
        };
        let out = match text(params, "out")? {
            Some(p) => PathBuf::from(p),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let plots = plot::figures(&results, &out, &fits).map_err(KernelError::Failed)?;
        let names = |thumbs: bool| -> Vec<String> {
            plots
                .iter()
                .filter(|p| p.to_string_lossy().ends_with("_thumb.png") == thumbs)
                .map(|p| p.display().to_string())
                .collect()
        };
        Ok(json!({ "plots": names(false), "thumbnails": names(true) }))
    }
}

/// A synthetic measurement with known g2, for demos and tests.
pub struct SyntheticStep;

impl Kernel for SyntheticStep {
    fn name(&self) -> &'static str {
        "xpcs.synthetic"
    }
    fn summary(&self) -> &'static str {
        "writes a synthetic XPCS measurement (raw, metadata, qmap, ground truth) with known D and beta"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["dir", "raw", "qmap", "metadata", "truth"]
    }
    fn params(&self) -> &'static [&'static str] {
        &[
            "dir",
            "name",
            "size",
            "frames",
            "modes",
            "mean_count",
            "frame_time",
            "seed",
        ]
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let d = SpeckleConfig::default();
        let cfg = SpeckleConfig {
            size: count(params, "size", 128)?,
            frames: count(params, "frames", 1000)?,
            modes: count(params, "modes", d.modes)?.max(1),
            mean_count: param_f64(params, "mean_count", d.mean_count)?,
            dt: param_f64(params, "frame_time", d.dt)?,
            seed: count(params, "seed", 1)? as u64,
            ..d
        };
        if cfg.size < 16 || cfg.frames < 10 {
            return Err(KernelError::param(
                "size",
                "size >= 16 and frames >= 10 are needed",
            ));
        }
        let dir = match text(params, "dir")? {
            Some(p) => PathBuf::from(p),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let name = text(params, "name")?.unwrap_or("synthetic");
        let files = ctx
            .on_granted_cores(|| write_dataset(&cfg, &dir, name, |_| {}))?
            .map_err(KernelError::Failed)?;
        let s = |p: &Path| p.display().to_string();
        Ok(json!({
            "dir": s(&files.dir),
            "raw": s(&files.raw),
            "qmap": s(&files.qmap),
            "metadata": s(&files.metadata),
            "truth": s(&files.truth),
        }))
    }
}
