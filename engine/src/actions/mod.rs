//! What a step does, executed on a pilot. Each action takes the rendered
//! [`TaskSpec`] and returns outputs or an error; timing and the result message
//! are built here once for all of them.

mod kernel;
mod publish;
mod shell;
pub mod transfer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use crate::flow::ActionKind;
use crate::protocol::{Outcome, TaskResult, TaskSpec};
use crate::site::TransferPolicy;
use crate::util::now_us;

/// Tells a running action to stop: async actions await it, blocking ones
/// (kernels, transfers) poll the flag.
#[derive(Clone)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel {
            flag: Arc::default(),
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Cancel {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// What the pilot grants an attempt.
#[derive(Clone, Debug)]
pub struct Grant {
    pub cpus: u32,
    pub gpus: Vec<u32>,
    /// The variable that restricts a process to its GPUs on this node
    /// (`CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`, `ZE_AFFINITY_MASK`).
    pub gpu_env: std::sync::Arc<str>,
    /// For a step on several nodes: the nodes, and the launcher command
    /// (srun/mpiexec/mpirun with the site's flags) that starts its ranks.
    pub hosts: Vec<String>,
    pub launch: Option<Vec<String>>,
    pub ranks_per_node: u32,
}

/// Why an action failed.
#[derive(Debug)]
pub enum Failure {
    Failed {
        error: String,
        exit_code: Option<i32>,
        outputs: Value,
    },
    Cancelled,
}

impl Failure {
    pub fn msg(e: impl Into<String>) -> Self {
        Failure::Failed {
            error: e.into(),
            exit_code: None,
            outputs: Value::Object(Default::default()),
        }
    }
}

/// Runs one attempt to the end and reports how it went.
pub async fn execute(
    spec: &TaskSpec,
    grant: &Grant,
    policy: &TransferPolicy,
    cancel: &Cancel,
) -> TaskResult {
    let started = now_us();
    let task_dir = PathBuf::from(&spec.task_dir);
    // Kernels create their directory only if they write to it (see
    // KernelContext::work_dir): a `noop` costs no filesystem call.
    let prepared = match spec.action {
        ActionKind::Kernel => Ok(()),
        _ => std::fs::create_dir_all(&task_dir),
    };
    let result = match prepared {
        Err(e) => Err(Failure::msg(format!(
            "{}: cannot create task directory: {e}",
            task_dir.display()
        ))),
        Ok(()) => {
            let fut = async {
                let staged = stage_in(spec, policy, cancel).await?;
                let out = match spec.action {
                    ActionKind::Shell => shell::run(spec, grant, cancel).await,
                    ActionKind::Transfer => transfer::run(spec, policy, cancel).await,
                    ActionKind::Publish => publish::run(spec).await,
                    ActionKind::Kernel => kernel::run(spec, grant, cancel).await,
                };
                out.map(|mut out| {
                    if let (Some(staged), Some(o)) = (staged, out.as_object_mut()) {
                        o.insert("staged".into(), staged);
                    }
                    out
                })
            };
            match spec.timeout_s {
                None => fut.await,
                Some(t) => {
                    match tokio::time::timeout(std::time::Duration::from_secs_f64(t), fut).await {
                        Ok(r) => r,
                        Err(_) => {
                            // Dropping the future kills a shell's process group; kernels
                            // and transfers see the flag at their next check.
                            cancel.cancel();
                            Err(Failure::msg(format!(
                                "timed out after {}",
                                crate::util::fmt_secs(t)
                            )))
                        }
                    }
                }
            }
        }
    };
    let finished = now_us();
    let (outcome, outputs, error, exit_code) = match result {
        Ok(out) => {
            let code = out
                .get("exit_code")
                .and_then(|c| c.as_i64())
                .map(|c| c as i32);
            (Outcome::Succeeded, out, None, code)
        }
        Err(Failure::Cancelled) => (
            Outcome::Cancelled,
            Value::Object(Default::default()),
            Some("cancelled".to_string()),
            None,
        ),
        Err(Failure::Failed {
            error,
            exit_code,
            outputs,
        }) => (Outcome::Failed, outputs, Some(error), exit_code),
    };
    TaskResult {
        attempt: spec.attempt,
        outcome,
        outputs,
        error,
        exit_code,
        started_us: started,
        finished_us: finished,
    }
}

/// Copies the step's staged inputs (see [`TaskSpec::stage`]) before its
/// action starts, each by the backend its place calls for and checked by
/// content; what each move took, by name (`None` when nothing is staged).
async fn stage_in(
    spec: &TaskSpec,
    policy: &TransferPolicy,
    cancel: &Cancel,
) -> Result<Option<Value>, Failure> {
    if spec.stage.is_empty() {
        return Ok(None);
    }
    let mut out = serde_json::Map::new();
    for st in &spec.stage {
        let t = std::time::Instant::now();
        let r = transfer::copy(vec![st.src.clone()], st.into.clone(), true, policy, cancel)
            .await
            .map_err(|f| match f {
                Failure::Failed { error, .. } => {
                    Failure::msg(format!("staging `{}` from {}: {error}", st.name, st.src))
                }
                cancelled => cancelled,
            })?;
        out.insert(
            st.name.clone(),
            serde_json::json!({
                "src": st.src,
                "path": st.path(),
                "backend": r.get("backend").cloned().unwrap_or_else(|| "local".into()),
                "remote": r.get("remote").cloned().unwrap_or(Value::Null),
                "bytes": r.get("bytes").cloned().unwrap_or(Value::Null),
                "copied": r.get("copied").cloned().unwrap_or(Value::Null),
                "skipped": r.get("skipped").cloned().unwrap_or(Value::Null),
                "seconds": t.elapsed().as_secs_f64(),
            }),
        );
    }
    Ok(Some(Value::Object(out)))
}

/// A string parameter, or a clear error naming it.
fn str_param<'a>(spec: &'a TaskSpec, name: &str) -> Result<&'a str, Failure> {
    match spec.params.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Failure::msg(format!(
            "params.{name}: expected a string, got {other}"
        ))),
        None => Err(Failure::msg(format!("params.{name} is required"))),
    }
}
