//! `shell`: a command in its own process group, output captured to files in the
//! attempt directory, optional outputs read from `$BEAMFLOW_OUTPUTS`.

use std::process::Stdio;

use serde_json::{json, Map, Value};

use super::{Cancel, Failure, Grant};
use crate::protocol::TaskSpec;

/// Kills the whole process group when dropped (timeout, cancel, pilot exit):
/// a shell step never leaves children behind.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg only sends a signal to the group we created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

pub async fn run(spec: &TaskSpec, grant: &Grant, cancel: &Cancel) -> Result<Value, Failure> {
    let p = &spec.params;
    let mut cmd = match (p.get("argv"), p.get("script")) {
        (Some(Value::Array(argv)), None) => {
            let args: Vec<String> = argv
                .iter()
                .map(|a| match a {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let Some((prog, rest)) = args.split_first() else {
                return Err(Failure::msg("params.argv is empty"));
            };
            let mut c = tokio::process::Command::new(prog);
            c.args(rest);
            c
        }
        (Some(Value::String(line)), None) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
        (None, Some(Value::String(script))) => {
            let mut c = tokio::process::Command::new("/bin/bash");
            c.arg("-euo").arg("pipefail").arg("-c").arg(script);
            c
        }
        _ => {
            return Err(Failure::msg(
                "params: a shell step needs `argv` (list) or `script` (string)",
            ))
        }
    };
    let dir = std::path::Path::new(&spec.task_dir);
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let outputs_path = dir.join("outputs.json");
    let open = |path: &std::path::Path| {
        std::fs::File::create(path).map_err(|e| Failure::msg(format!("{}: {e}", path.display())))
    };
    cmd.stdout(Stdio::from(open(&stdout_path)?))
        .stderr(Stdio::from(open(&stderr_path)?))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .env("BEAMFLOW_RUN_ID", spec.run.to_string())
        .env("BEAMFLOW_ATTEMPT_ID", spec.attempt.to_string())
        .env("BEAMFLOW_STEP", &spec.step)
        .env("BEAMFLOW_RUN_DIR", &spec.run_dir)
        .env("BEAMFLOW_TASK_DIR", &spec.task_dir)
        .env("BEAMFLOW_OUTPUTS", &outputs_path)
        .env("OMP_NUM_THREADS", grant.cpus.max(1).to_string());
    // The pilot's own binary, for steps that call beamflow (jobs/bench.toml).
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("BEAMFLOW_EXE", exe);
    }
    if !grant.gpus.is_empty() {
        let ids: Vec<String> = grant.gpus.iter().map(|g| g.to_string()).collect();
        cmd.env(&*grant.gpu_env, ids.join(","));
    }
    if let Some(Value::Object(env)) = p.get("env") {
        for (k, v) in env {
            cmd.env(
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    match p.get("cwd") {
        Some(Value::String(cwd)) => {
            cmd.current_dir(cwd);
        }
        _ => {
            cmd.current_dir(dir);
        }
    }
    // SAFETY: close_fds_on_exec makes only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(beamflow_kernels::inherit::close_fds_on_exec);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let what = p
            .get("argv")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or("/bin/bash");
        Failure::msg(format!("cannot start `{what}`: {e}"))
    })?;
    let _guard = GroupGuard(child.id().map(|id| id as i32));
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| Failure::msg(format!("waiting for the command: {e}")))?,
        _ = cancel.cancelled() => return Err(Failure::Cancelled),
    };
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let mut outputs = Map::new();
    outputs.insert("exit_code".into(), json!(code));
    outputs.insert("stdout".into(), json!(stdout_path.display().to_string()));
    outputs.insert("stderr".into(), json!(stderr_path.display().to_string()));
    if !status.success() {
        let tail = tail_lines(&stderr_path, 5);
        let mut error = format!("exit code {code}");
        if !tail.is_empty() {
            error.push_str("; stderr ends with:\n");
            error.push_str(&tail);
        }
        return Err(Failure::Failed {
            error,
            exit_code: Some(code),
            outputs: Value::Object(outputs),
        });
    }
    if let Ok(text) = std::fs::read_to_string(&outputs_path) {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(extra)) => outputs.extend(extra),
            Ok(_) => {
                return Err(Failure::msg(format!(
                    "{}: expected a JSON object",
                    outputs_path.display()
                )))
            }
            Err(e) => {
                return Err(Failure::msg(format!(
                    "{}: not valid JSON: {e}",
                    outputs_path.display()
                )))
            }
        }
    }
    Ok(Value::Object(outputs))
}

fn tail_lines(path: &std::path::Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
