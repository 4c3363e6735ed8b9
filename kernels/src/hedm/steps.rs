//! HEDM kernels for flows: `hedm.synthetic` writes frames with known peaks,
//! `hedm.peaks` finds and fits them (parameters are [`Config`]'s fields).

use serde_json::{json, Value};

use super::config::{Config, SyntheticParams};
use crate::params::from_step;
use crate::registry::{Kernel, KernelContext, KernelError};
use crate::synthetic::hedm::write_dataset;

/// The step's parameters as a [`Config`]; the attempt's directory is the
/// default output directory.
pub fn config(params: &Value, ctx: &KernelContext) -> Result<Config, KernelError> {
    let c: Config = from_step(params, ctx)?;
    if c.frames.as_os_str().is_empty() {
        return Err(KernelError::param("frames", "required"));
    }
    Ok(c)
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
        crate::param_names!(Config)
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
        crate::param_names!(SyntheticParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let p: SyntheticParams = from_step(params, ctx)?;
        let scene = p.scene().map_err(|e| {
            let (name, msg) = e.split_once(": ").unwrap_or(("params", &e));
            KernelError::param(name, msg)
        })?;
        let dir = match &p.dir {
            Some(d) => d.clone(),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let (count, name) = (p.frames, p.name.as_str());
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
