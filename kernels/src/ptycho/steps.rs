//! Ptychography kernels for flows: `ptycho.synthetic` simulates a dataset
//! with known truth, `ptycho.reconstruct` reconstructs one (parameters are
//! [`Config`]'s fields and the engine options).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::config::{Config, SyntheticParams};
use crate::params::from_step;
use crate::registry::{Kernel, KernelContext, KernelError};
use crate::synthetic::ptycho::write_dataset;

pub struct ReconstructStep;

impl Kernel for ReconstructStep {
    fn name(&self) -> &'static str {
        "ptycho.reconstruct"
    }
    fn summary(&self) -> &'static str {
        "reconstructs object (and probe) from far-field ptychography data with ePIE, rPIE, DM or LSQ-ML (result HDF5, amplitude/phase PNGs)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "result",
            "summary",
            "amplitude_png",
            "phase_png",
            "iterations",
            "final_loss",
            "nrmse",
            "seconds_per_iteration",
            "positions_per_s",
            "device",
        ]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(Config)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        // The engine name is a word, but parse it here for a clear error.
        if let Some(e) = params.get("engine").and_then(|v| v.as_str()) {
            e.parse::<super::Engine>()
                .map_err(|m| KernelError::param("engine", m))?;
        }
        let cfg: Config = from_step(params, ctx)?;
        if cfg.data.as_os_str().is_empty() {
            return Err(KernelError::param("data", "required"));
        }
        let r = ctx.on_granted_cores(|| cfg.run(&mut |_, _, _| !ctx.cancelled()))?;
        if ctx.cancelled() {
            return Err(KernelError::Cancelled);
        }
        let r = r.map_err(KernelError::Failed)?;
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Ok(json!({
            "result": r.result.display().to_string(),
            "summary": r.summary_json.display().to_string(),
            "amplitude_png": s(&r.amplitude_png),
            "phase_png": s(&r.phase_png),
            "iterations": r.iterations,
            "final_loss": r.final_loss,
            "nrmse": r.final_error.map(|e| e.nrmse),
            "seconds_per_iteration": r.seconds_per_iteration,
            "positions_per_s": r.positions_per_s,
            "device": r.device,
        }))
    }
}

pub struct SyntheticStep;

impl Kernel for SyntheticStep {
    fn name(&self) -> &'static str {
        "ptycho.synthetic"
    }
    fn summary(&self) -> &'static str {
        "simulates far-field ptychography with known object and probe (dataset HDF5, optionally the Ptychodus pair)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["dir", "data", "dp", "meta", "positions"]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(SyntheticParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let p: SyntheticParams = from_step(params, ctx)?;
        let scene = p
            .scene()
            .map_err(|e| KernelError::param("size", e.trim_start_matches("size: ")))?;
        let dir = match &p.dir {
            Some(d) => d.clone(),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let (name, ptychodus) = (p.name.as_str(), p.ptychodus);
        let f = ctx
            .on_granted_cores(|| write_dataset(&scene, &dir, name, ptychodus))?
            .map_err(KernelError::Failed)?;
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Ok(json!({
            "dir": dir.display().to_string(),
            "data": f.data.display().to_string(),
            "dp": s(&f.dp),
            "meta": s(&f.meta),
            "positions": f.positions,
        }))
    }
}
