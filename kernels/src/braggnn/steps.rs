//! BraggNN kernels for flows: `braggnn.synthetic` (patches with known
//! centres), `braggnn.prepare` (patches cut from frames around fitted
//! peaks), `braggnn.train` (a network, its ONNX export and learning curve)
//! and `braggnn.infer` (peak positions on raw frames).

use std::path::Path;

use serde_json::{json, Value};

use super::params::{InferParams, PrepareParams, SyntheticParams, TrainParams};
use super::train::train_shared;
use super::{io, onnx, plot, prepare, train, Shape};
use crate::backend::granted_device;
use crate::params::from_step;
use crate::ranks::Collective;
use crate::registry::{Kernel, KernelContext, KernelError};
use crate::synthetic::braggnn::patches;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn failed(e: String) -> KernelError {
    KernelError::Failed(e)
}

/// A parameter's check that starts with its name (`psz: …`).
fn named(e: String) -> KernelError {
    match e.split_once(": ") {
        Some((name, msg)) => KernelError::param(name, msg),
        None => KernelError::Failed(e),
    }
}

/// The frame stack a search needs.
fn frames_given(search: &crate::hedm::config::Config) -> Result<(), KernelError> {
    if search.frames.as_os_str().is_empty() {
        return Err(KernelError::param("frames", "required"));
    }
    Ok(())
}

pub struct SyntheticStep;

impl Kernel for SyntheticStep {
    fn name(&self) -> &'static str {
        "braggnn.synthetic"
    }
    fn summary(&self) -> &'static str {
        "writes single-peak training patches with known centres (HDF5 /patches, /centres)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["patches", "count"]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(SyntheticParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let p: SyntheticParams = from_step(params, ctx)?;
        let file = p.file().map_err(named)?;
        let set = ctx.on_granted_cores(|| patches(p.count, p.psz, p.aug, p.seed))?;
        io::write(&file, &set).map_err(failed)?;
        Ok(json!({"patches": s(&file), "count": set.len()}))
    }
}

pub struct PrepareStep;

impl Kernel for PrepareStep {
    fn name(&self) -> &'static str {
        "braggnn.prepare"
    }
    fn summary(&self) -> &'static str {
        "cuts training patches from frames around the peaks of a hedm.peaks table (lone, converged peaks; the fit is the label)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["patches", "count", "peaks", "crowded", "edge"]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(PrepareParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let p: PrepareParams = from_step(params, ctx)?;
        frames_given(&p.search)?;
        let (file, st) = ctx
            .on_granted_cores(|| prepare::run(&p.search, &p.peaks, p.psz, p.aug, &mut |_, _| {}))?
            .map_err(failed)?;
        Ok(json!({
            "patches": s(&file),
            "count": st.kept,
            "peaks": st.peaks,
            "crowded": st.crowded,
            "edge": st.edge,
        }))
    }
}

pub struct TrainStep;

impl Kernel for TrainStep {
    fn name(&self) -> &'static str {
        "braggnn.train"
    }
    fn summary(&self) -> &'static str {
        "trains BraggNN on a patch file (best-epoch weights, ONNX export, history, learning curve)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "weights",
            "onnx",
            "history",
            "curve",
            "best_epoch",
            "epochs_run",
            "val_mean_px",
            "val_p95_px",
            "samples_per_s",
            "device",
        ]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(TrainParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        train_step(params, ctx, None)
    }
    fn spans_nodes(&self) -> bool {
        true
    }
    /// Data parallel: the ranks split each minibatch and sum gradients
    /// (`train_shared`); rank 0 writes the model and the outputs.
    fn run_shared(
        &self,
        params: &Value,
        ctx: &KernelContext,
        world: &dyn Collective,
    ) -> Result<Value, KernelError> {
        train_step(params, ctx, Some(world))
    }
}

/// Training on this process's granted cores, or as one rank of `world`
/// (MPI is used from the calling thread: no pool of its own then).
fn train_step(
    params: &Value,
    ctx: &KernelContext,
    world: Option<&dyn Collective>,
) -> Result<Value, KernelError> {
    let mut p: TrainParams = from_step(params, ctx)?;
    p.train.device = granted_device(&p.train.device, &ctx.gpus);
    let set = io::read(&p.patches).map_err(failed)?;
    std::fs::create_dir_all(&p.out).map_err(|e| failed(format!("{}: {e}", s(&p.out))))?;
    let shape = Shape {
        psz: set.psz as i64,
        fcsz: p.fcsz.clone(),
    };
    let weights = p.out.join("best.safetensors");
    let mut cancelled = false;
    p.train.threads = ctx.cpus.max(1);
    let mut progress = |_: &_| {
        cancelled = ctx.cancelled();
        !cancelled
    };
    let tr = match world {
        None => ctx.on_granted_cores(|| {
            train(&set, shape.clone(), &p.train, Some(&weights), &mut progress)
        })?,
        Some(w) => train_shared(
            &set,
            shape.clone(),
            &p.train,
            Some(&weights),
            &mut progress,
            Some(w),
        ),
    };
    if cancelled {
        return Err(KernelError::Cancelled);
    }
    let tr = tr.map_err(|e| failed(format!("{}: {e}", s(&p.patches))))?;
    let ranks = world.map_or(1, |w| w.size());
    if world.is_some_and(|w| w.rank() != 0) {
        return Ok(json!({ "ranks": ranks }));
    }
    let model = p.out.join("braggnn.onnx");
    onnx::export(&tr.vs, &shape, None, &model).map_err(failed)?;
    let curve = p.out.join("learning_curve.png");
    plot::learning_curve(&curve, &tr.history, tr.best).map_err(failed)?;
    let history = p.out.join("history.json");
    let kept = tr.history[tr.best];
    let out = json!({
        "weights": s(&weights),
        "onnx": s(&model),
        "history": s(&history),
        "curve": s(&curve),
        "best_epoch": kept.epoch,
        "epochs_run": tr.history.len(),
        "val_mean_px": kept.val_mean_px,
        "val_p95_px": kept.val_p95_px,
        "samples_per_s": tr.median_samples_per_s(),
        "device": tr.device,
        "ranks": ranks,
    });
    let record = json!({
        "patches": s(&p.patches),
        "psz": shape.psz,
        "fcsz": shape.fcsz,
        "device_note": tr.device_note,
        "best": kept,
        "history": tr.history,
    });
    std::fs::write(
        &history,
        serde_json::to_string_pretty(&record).unwrap_or_default(),
    )
    .map_err(|e| failed(format!("{}: {e}", s(&history))))?;
    Ok(out)
}

pub struct InferStep;

impl Kernel for InferStep {
    fn name(&self) -> &'static str {
        "braggnn.infer"
    }
    fn summary(&self) -> &'static str {
        "locates Bragg peaks on raw frames with a peak model (.onnx through ONNX Runtime, or BraggNN weights through libtorch)"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "peaks",
            "lone",
            "frames",
            "peaks_h5",
            "peaks_csv",
            "summary",
            "patches_per_s",
            "device",
        ]
    }
    fn params(&self) -> &'static [&'static str] {
        crate::param_names!(InferParams)
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let mut cfg: InferParams = from_step(params, ctx)?;
        frames_given(&cfg.search)?;
        if cfg.model.as_os_str().is_empty() {
            return Err(KernelError::param("model", "required"));
        }
        cfg.device = granted_device(&cfg.device, &ctx.gpus);
        let mut cancelled = false;
        let r = ctx.on_granted_cores(|| {
            cfg.run(&mut |_, _| {
                cancelled |= ctx.cancelled();
            })
        })?;
        if cancelled {
            return Err(KernelError::Cancelled);
        }
        let r = r.map_err(failed)?;
        Ok(json!({
            "peaks": r.summary.peaks,
            "lone": r.summary.lone,
            "frames": r.summary.frames,
            "peaks_h5": s(&r.peaks_h5),
            "peaks_csv": s(&r.peaks_csv),
            "summary": s(&r.summary_json),
            "patches_per_s": r.summary.patches_per_s,
            "device": r.summary.device,
        }))
    }
}
