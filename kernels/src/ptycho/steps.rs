//! Ptychography kernels for flows: `ptycho.synthetic` simulates a dataset
//! with known truth, `ptycho.reconstruct` reconstructs one (parameters are
//! [`Config`]'s fields and the engine options).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::config::Config;
use crate::registry::{param_f64, typed_params, Kernel, KernelContext, KernelError};
use crate::synthetic::ptycho::{write_dataset, Scene};

/// Every parameter of `ptycho.reconstruct`.
const RECON_PARAMS: &[&str] = &[
    "data",
    "meta",
    "out",
    "name",
    "probe",
    "modes",
    "plot",
    "engine",
    "iterations",
    "alpha",
    "beta",
    "object_step",
    "probe_step",
    "update_probe",
    "probe_start",
    "shuffle",
    "seed",
    "dm_beta",
    "dm_inner",
    "dm_relax",
    "batch",
    "backend",
    "correct_positions",
    "position_start",
    "position_step",
    "position_limit",
];

/// Parameters that hold paths, names and words.
const TEXT_PARAMS: &[&str] = &["data", "meta", "out", "name", "probe", "engine", "backend"];

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
        RECON_PARAMS
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let mut params = params.clone();
        // The engine name is a word, but parse it here for a clear error.
        if let Some(e) = params.get("engine").and_then(|v| v.as_str()) {
            let e: super::Engine = e
                .parse()
                .map_err(|m: String| KernelError::param("engine", m))?;
            params["engine"] = json!(e.name());
        }
        let cfg: Config = typed_params(&params, ctx, RECON_PARAMS, TEXT_PARAMS, "data")?;
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
        &["dir", "name", "size", "seed", "noise", "ptychodus"]
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let word = |k: &str| params.get(k).and_then(|v| v.as_str());
        let flag = |k: &str, default: bool| match params.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(v) => Err(KernelError::param(
                k,
                format!("expected true or false, got {v}"),
            )),
        };
        let mut scene = Scene::preset(word("size").unwrap_or("small"))
            .map_err(|m| KernelError::param("size", m))?;
        scene.seed = param_f64(params, "seed", scene.seed as f64)? as u64;
        scene.noise = flag("noise", true)?;
        let dir = match word("dir") {
            Some(p) => PathBuf::from(p),
            None => ctx.ensure_work_dir()?.to_path_buf(),
        };
        let name = word("name").unwrap_or("ptycho");
        let ptychodus = flag("ptychodus", false)?;
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
