//! `kernel`: a native kernel from the registry, in-process on a blocking thread.

use serde_json::Value;

use super::{Cancel, Failure, Grant};
use crate::protocol::TaskSpec;
use beamflow_kernels::{KernelContext, KernelError};

pub async fn run(spec: &TaskSpec, grant: &Grant, cancel: &Cancel) -> Result<Value, Failure> {
    let name = spec.kernel.clone().unwrap_or_default();
    let kernel = beamflow_kernels::find(&name).ok_or_else(|| {
        Failure::msg(format!(
            "unknown kernel `{name}` (this pilot is older than the flow?)"
        ))
    })?;
    let ctx = KernelContext::new(
        spec.task_dir.clone().into(),
        grant.cpus.max(1) as usize,
        grant.gpus.clone(),
        cancel.flag(),
    );
    let params = spec.params.clone();
    let out = tokio::task::spawn_blocking(move || kernel.run(&params, &ctx))
        .await
        .map_err(|e| Failure::msg(format!("kernel `{name}` panicked: {e}")))?;
    match out {
        Ok(v) => Ok(v),
        Err(KernelError::Cancelled) => Err(Failure::Cancelled),
        Err(e) => Err(Failure::msg(format!("kernel `{name}`: {e}"))),
    }
}
