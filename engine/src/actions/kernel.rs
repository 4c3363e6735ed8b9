//! `kernel`: a native kernel from the registry, in-process on a blocking
//! thread — or apart from the pilot as `beamflow kernel step NAME`: in a
//! process of its own for an isolated step (so a crash fails the step, not
//! the pilot), as MPI ranks started by the site's launcher for a step on
//! several nodes.

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
    if grant.launch.is_some() || spec.isolate {
        return run_apart(spec, &name, grant, cancel).await;
    }
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

/// The kernel in processes of its own: one for an isolated step, ranks on
/// the granted nodes through the launcher for a step on several. The
/// parameters go through a file in the attempt directory; the (rank 0)
/// process writes the outputs.
async fn run_apart(
    spec: &TaskSpec,
    name: &str,
    grant: &Grant,
    cancel: &Cancel,
) -> Result<Value, Failure> {
    let dir = std::path::Path::new(&spec.task_dir);
    let params = dir.join("params.json");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&params, spec.params.to_string()))
        .map_err(|e| Failure::msg(format!("{}: {e}", params.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::msg(format!("the pilot's own executable: {e}")))?;
    let per_rank = (grant.cpus / grant.ranks_per_node.max(1)).max(1);
    let (mut cmd, what) = match &grant.launch {
        Some(launch) => {
            let (prog, args) = launch.split_first().expect("a launcher command");
            let mut cmd = tokio::process::Command::new(prog);
            cmd.args(args).arg(&exe);
            (cmd, prog.clone())
        }
        None => (
            tokio::process::Command::new(&exe),
            exe.display().to_string(),
        ),
    };
    cmd.args(["kernel", "step", name, "--params"])
        .arg(&params)
        .arg("--work-dir")
        .arg(dir)
        // Launchers need not pass the environment to other hosts: rank 0
        // is told where the outputs go on its command line.
        .arg("--outputs")
        .arg(dir.join("outputs.json"))
        .args(["--threads", &per_rank.to_string()]);
    if grant.launch.is_some() {
        let ranks = grant.hosts.len() * grant.ranks_per_node.max(1) as usize;
        cmd.args(["--mpi", "--ranks", &ranks.to_string()]);
    }
    let mut out = super::shell::run_process(cmd, &[], spec, grant, cancel, &what).await?;
    if let (Value::Object(m), true) = (&mut out, grant.launch.is_some()) {
        m.insert("nodes".into(), grant.hosts.len().into());
    }
    Ok(out)
}
