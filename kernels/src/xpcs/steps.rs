//! The XPCS kernels as flow steps (`kernel = "xpcs.multitau"` …): JSON
//! parameters in, JSON outputs a later step or the catalog can use out.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::io::{open_frames, read_frame_time};
use super::params::{AnalysisParams, SyntheticParams};
use super::pipeline::{self, Mode, Options, PipelineError, Summary};
use super::plot;
use crate::params::from_step;
use crate::ranks::Collective;
use crate::registry::{Kernel, KernelContext, KernelError};
use crate::synthetic::xpcs::write_dataset;

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

/// The analysis options from step parameters shared by both correlations.
fn options(params: &Value, ctx: &KernelContext, mode: Mode) -> Result<Options, KernelError> {
    from_step::<AnalysisParams>(params, ctx)?.options(mode, &ctx.gpus)
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
        "resolved": s.fits.iter().map(|f| f.resolved).collect::<Vec<_>>(),
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
        "frames_note": s.frames_note,
    })
}

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
    "resolved",
    "bins",
    "pixel_frames_per_s",
    "seconds",
    "plots",
    "g2_png",
    "thumbnails",
    "plot_error",
    "device",
    "device_note",
    "frames_note",
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
        crate::param_names!(AnalysisParams)
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
        crate::param_names!(AnalysisParams)
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
            None => super::io::find_metadata(&raw).map_err(KernelError::Failed)?,
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
        crate::param_names!(SyntheticParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let p: SyntheticParams = from_step(params, ctx)?;
        let cfg = p.config()?;
        let dir = match &p.dir {
            Some(d) => d.clone(),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let files = ctx
            .on_granted_cores(|| write_dataset(&cfg, &dir, &p.name, |_| {}))?
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
