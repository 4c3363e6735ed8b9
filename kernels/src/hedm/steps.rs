//! HEDM kernels for flows: `hedm.synthetic` writes frames with known peaks,
//! `hedm.peaks` finds and fits them (parameters are [`Config`]'s fields).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::config::Config;
use crate::registry::{param_f64, typed_params, Kernel, KernelContext, KernelError};
use crate::synthetic::hedm::{write_dataset, Scene};

/// Every [`Config`] field, as flow validation needs them.
pub const PEAK_PARAMS: &[&str] = &[
    "frames",
    "dataset",
    "out",
    "name",
    "dark",
    "dark_value",
    "flood",
    "mask",
    "threshold",
    "rings",
    "geometry",
    "centre",
    "min_pixels",
    "max_pixels",
    "saturation",
    "max_peaks",
    "prominence",
    "omega_start",
    "omega_step",
    "first_frame",
    "last_frame",
    "max_iter",
    "tol",
    "plot",
];

/// Fields that hold paths and names; every other one holds a number, a
/// boolean or a list, and arrives from a template as a string read as JSON.
pub const TEXT_PARAMS: &[&str] = &[
    "frames", "dataset", "out", "name", "dark", "flood", "mask", "geometry",
];

/// The step's parameters as a [`Config`]; the attempt's directory is the
/// default output directory.
pub fn config(params: &Value, ctx: &KernelContext) -> Result<Config, KernelError> {
    typed_params(params, ctx, PEAK_PARAMS, TEXT_PARAMS, "frames")
}

pub struct PeaksStep;

impl Kernel for PeaksStep {
    fn name(&self) -> &'static str {
        "hedm.peaks"
    }
    fn summary(&self) -> &'static str {
        "finds Bragg peaks in HDF5 frames and fits them jointly per region with MIDAS's pseudo-Voigt (peak table HDF5 + CSV, overlay PNG)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "peaks",
            "frames",
            "regions",
            "converged",
            "peaks_h5",
            "peaks_csv",
            "overlay",
            "summary",
            "peaks_per_s",
            "find_ms_per_frame",
        ]
    }
    fn params(&self) -> &'static [&'static str] {
        PEAK_PARAMS
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let cfg = config(params, ctx)?;
        let mut cancelled = false;
        let r = ctx.on_granted_cores(|| {
            cfg.run(&mut |_, _| {
                cancelled |= ctx.cancelled();
            })
        })?;
        if cancelled {
            return Err(KernelError::Cancelled);
        }
        let r = r.map_err(KernelError::Failed)?;
        let s = |p: &std::path::Path| p.display().to_string();
        Ok(json!({
            "peaks": r.summary.peaks,
            "frames": r.summary.frames,
            "regions": r.summary.regions,
            "converged": r.summary.converged,
            "peaks_h5": s(&r.peaks_h5),
            "peaks_csv": s(&r.peaks_csv),
            "overlay": r.overlay.as_deref().map(s).unwrap_or_default(),
            "summary": s(&r.summary_json),
            "peaks_per_s": r.summary.peaks_per_s_fit,
            "find_ms_per_frame": r.summary.find_ms_per_frame,
        }))
    }
}

pub struct SyntheticStep;

impl Kernel for SyntheticStep {
    fn name(&self) -> &'static str {
        "hedm.synthetic"
    }
    fn summary(&self) -> &'static str {
        "writes HEDM frames with known pseudo-Voigt peaks (uint16 HDF5 + truth JSON)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["dir", "frames", "truth", "peaks"]
    }
    fn params(&self) -> &'static [&'static str] {
        &[
            "dir",
            "name",
            "frames",
            "size",
            "peaks",
            "polar",
            "seed",
            "background",
        ]
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let d = Scene::default();
        let int = |k: &str, default: usize| -> Result<usize, KernelError> {
            Ok(param_f64(params, k, default as f64)? as usize)
        };
        let size = int("size", 1024)?;
        if size < 64 {
            return Err(KernelError::param("size", "at least 64 pixels"));
        }
        let polar = match params.get("polar") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(v) => {
                return Err(KernelError::param(
                    "polar",
                    format!("expected true or false, got {v}"),
                ))
            }
        };
        let scene = Scene {
            rows: size,
            cols: size,
            peaks_per_frame: int("peaks", 300 * size * size / (2048 * 2048))?.max(1),
            background: param_f64(params, "background", d.background)?,
            polar,
            seed: int("seed", 1234)? as u64,
            ..d
        };
        let dir = match params.get("dir").and_then(|v| v.as_str()) {
            Some(p) => PathBuf::from(p),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let name = params
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("hedm");
        let count = int("frames", 4)?.max(1);
        let f = ctx
            .on_granted_cores(|| write_dataset(&scene, count, &dir, name, &mut |_| {}))?
            .map_err(KernelError::Failed)?;
        Ok(json!({
            "dir": dir.display().to_string(),
            "frames": f.frames.display().to_string(),
            "truth": f.truth.display().to_string(),
            "peaks": f.peaks,
        }))
    }
}
