//! The kernel registry: the single list of kernels a flow may name.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

/// Why a kernel did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A parameter is missing or has the wrong type or value.
    #[error("parameter `{name}`: {message}")]
    Param { name: String, message: String },
    /// The run was cancelled through [`KernelContext::cancelled`].
    #[error("cancelled")]
    Cancelled,
    /// Anything else: I/O, bad input data, numerical failure.
    #[error("{0}")]
    Failed(String),
}

impl KernelError {
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        KernelError::Param {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// What a running kernel may know about where and how it runs.
#[derive(Clone, Debug)]
pub struct KernelContext {
    /// Directory private to this attempt: outputs written here never clobber
    /// those of another attempt of the same step. It does not exist until
    /// [`KernelContext::ensure_work_dir`] creates it.
    pub work_dir: PathBuf,
    /// CPU cores granted to this attempt; a kernel sizes its thread pool by it.
    pub cpus: usize,
    /// GPU indices granted to this attempt (empty on CPU-only pilots).
    pub gpus: Vec<u32>,
    cancel: Arc<AtomicBool>,
}

impl KernelContext {
    pub fn new(work_dir: PathBuf, cpus: usize, gpus: Vec<u32>, cancel: Arc<AtomicBool>) -> Self {
        KernelContext {
            work_dir,
            cpus,
            gpus,
            cancel,
        }
    }

    /// Creates the attempt's directory (and parents) and returns it.
    pub fn ensure_work_dir(&self) -> Result<&std::path::Path, KernelError> {
        std::fs::create_dir_all(&self.work_dir).map_err(|e| {
            KernelError::Failed(format!("{}: cannot create: {e}", self.work_dir.display()))
        })?;
        Ok(&self.work_dir)
    }

    /// Runs `f` on a thread pool of the cores granted to this attempt.
    pub fn on_granted_cores<T: Send>(
        &self,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, KernelError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.cpus.max(1))
            .build()
            .map_err(|e| KernelError::Failed(format!("thread pool: {e}")))?;
        Ok(pool.install(f))
    }

    /// True once the engine asked this attempt to stop. Long kernels check it
    /// between iterations and return [`KernelError::Cancelled`].
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A kernel as the engine sees it.
pub trait Kernel: Send + Sync {
    /// The name flows use in `kernel = "..."`.
    fn name(&self) -> &'static str;
    /// One line for `beamflow kernel list` and error messages.
    fn summary(&self) -> &'static str;
    /// Output keys the kernel always returns; flow validation rejects
    /// references to any other `steps.NAME.outputs.KEY`.
    fn outputs(&self) -> &'static [&'static str];
    /// Parameter names the kernel accepts; flow validation rejects others.
    fn params(&self) -> &'static [&'static str];
    /// Run on the calling (blocking) thread.
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError>;
    /// True when the kernel can share one run among the ranks of a step on
    /// several nodes ([`Kernel::run_shared`]); flows may give only these
    /// kernels `nodes > 1`.
    fn spans_nodes(&self) -> bool {
        false
    }
    /// Run as one rank of `world`, every rank with the same parameters;
    /// rank 0's outputs are the step's. Kernels that span nodes override it.
    fn run_shared(
        &self,
        params: &Value,
        ctx: &KernelContext,
        world: &dyn crate::ranks::Collective,
    ) -> Result<Value, KernelError> {
        if world.size() == 1 {
            return self.run(params, ctx);
        }
        Err(KernelError::Failed(format!(
            "kernel `{}` runs in one process; it cannot share a run among {} ranks",
            self.name(),
            world.size()
        )))
    }
}

/// Every registered kernel, in a stable order.
pub fn kernels() -> &'static [&'static dyn Kernel] {
    use crate::xpcs::steps;
    static ALL: &[&dyn Kernel] = &[
        &crate::builtin::Noop,
        &crate::builtin::Sleep,
        &crate::builtin::Fault,
        &steps::SyntheticStep,
        &steps::MetadataStep,
        &steps::MultitauStep,
        &steps::TwotimeStep,
        &steps::PlotStep,
        &crate::hedm::steps::SyntheticStep,
        &crate::hedm::steps::PeaksStep,
        &crate::ptycho::steps::SyntheticStep,
        &crate::ptycho::steps::ReconstructStep,
        #[cfg(feature = "torch")]
        &crate::braggnn::steps::SyntheticStep,
        #[cfg(feature = "torch")]
        &crate::braggnn::steps::PrepareStep,
        #[cfg(feature = "torch")]
        &crate::braggnn::steps::TrainStep,
        #[cfg(feature = "torch")]
        &crate::braggnn::steps::InferStep,
    ];
    ALL
}

/// The kernel named `name`, if any.
pub fn find(name: &str) -> Option<&'static dyn Kernel> {
    kernels().iter().copied().find(|k| k.name() == name)
}

/// Reads an optional non-negative number parameter.
pub fn param_f64(params: &Value, name: &str, default: f64) -> Result<f64, KernelError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let x = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| KernelError::param(name, format!("expected a number, got {v}")))?;
            if !x.is_finite() || x < 0.0 {
                return Err(KernelError::param(
                    name,
                    format!("expected a finite number >= 0, got {x}"),
                ));
            }
            Ok(x)
        }
    }
}
