//! `kernel`: a native kernel from the registry, in-process on a blocking
//! thread — or, for a step on several nodes, as MPI ranks of
//! `beamflow kernel step NAME --mpi` started by the site's launcher.

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
    if let Some(launch) = &grant.launch {
        return run_ranks(spec, &name, launch, grant, cancel).await;
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

/// The kernel as ranks on the granted nodes: the parameters go through a
/// file in the attempt directory and rank 0 writes the outputs.
async fn run_ranks(
    spec: &TaskSpec,
    name: &str,
    launch: &[String],
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
    let (prog, args) = launch.split_first().expect("a launcher command");
    let per_rank = (grant.cpus / grant.ranks_per_node.max(1)).max(1);
    let ranks = grant.hosts.len() * grant.ranks_per_node.max(1) as usize;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .arg(exe)
        .args(["kernel", "step", name, "--mpi", "--params"])
        .arg(&params)
        .arg("--work-dir")
        .arg(dir)
        // Launchers need not pass the environment to other hosts: rank 0
        // is told where the outputs go on its command line.
        .arg("--outputs")
        .arg(dir.join("outputs.json"))
        .args(["--threads", &per_rank.to_string()])
        .args(["--ranks", &ranks.to_string()]);
    let mut out = super::shell::run_process(cmd, &[], spec, grant, cancel, prog).await?;
    if let Value::Object(m) = &mut out {
        m.insert("nodes".into(), grant.hosts.len().into());
    }
    Ok(out)
}
