//! `shell`: a command in its own process group, output captured to files in the
//! attempt directory, optional outputs read from `$BEAMFLOW_OUTPUTS`.

use std::process::Stdio;

use serde_json::{json, Map, Value};

use super::{Cancel, Failure, Grant};
use crate::batch::script::shell_quote;
use crate::protocol::TaskSpec;

/// Kills the whole process group when dropped (timeout, cancel, pilot exit):
/// a shell step never leaves children behind.
/// How long a cancelled step has between SIGTERM and SIGKILL.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    let env: Vec<(String, String)> = match p.get("env") {
        Some(Value::Object(env)) => env
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().map(str::to_string);
                (k.clone(), text.unwrap_or_else(|| v.to_string()))
            })
            .collect(),
        _ => vec![],
    };
    if let Some(Value::String(cwd)) = p.get("cwd") {
        cmd.current_dir(cwd);
    }
    let what = p
        .get("argv")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("/bin/bash")
        .to_string();
    run_process(cmd, &env, spec, grant, cancel, &what).await
}

/// Runs `cmd` for an attempt: in its own process group (killed whole on
/// cancel, timeout or pilot exit), stdout and stderr to files in the
/// attempt directory (its working directory unless set), the attempt's
/// `BEAMFLOW_*` variables, its GPUs, and for a step on several nodes the
/// launcher (`$BEAMFLOW_LAUNCH`, used as `$BEAMFLOW_LAUNCH my_mpi_app`)
/// and nodes. Outputs: the exit code, the two file paths and what the
/// command wrote to `$BEAMFLOW_OUTPUTS` (a JSON object). `env` comes
/// last and may override any of these.
pub(super) async fn run_process(
    mut cmd: tokio::process::Command,
    env: &[(String, String)],
    spec: &TaskSpec,
    grant: &Grant,
    cancel: &Cancel,
    what: &str,
) -> Result<Value, Failure> {
    let dir = std::path::Path::new(&spec.task_dir);
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let outputs_path = dir.join("outputs.json");
    let open = |path: &std::path::Path| {
        std::fs::File::create(path).map_err(|e| Failure::msg(format!("{}: {e}", path.display())))
    };
    scrub_secrets(&mut cmd);
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
        .env(
            "OMP_NUM_THREADS",
            (grant.cpus / grant.ranks_per_node.max(1))
                .max(1)
                .to_string(),
        );
    if cmd.as_std().get_current_dir().is_none() {
        cmd.current_dir(dir);
    }
    // The pilot's own binary, for steps that call beamflow (jobs/bench.toml).
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("BEAMFLOW_EXE", exe);
    }
    if !grant.gpus.is_empty() {
        let ids: Vec<String> = grant.gpus.iter().map(|g| g.to_string()).collect();
        cmd.env(&*grant.gpu_env, ids.join(","));
    }
    if let Some(launch) = &grant.launch {
        let line: Vec<String> = launch.iter().map(|a| shell_quote(a)).collect();
        cmd.env("BEAMFLOW_LAUNCH", line.join(" "))
            .env("BEAMFLOW_HOSTS", grant.hosts.join(","))
            .env("BEAMFLOW_NODES", grant.hosts.len().to_string());
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: close_fds_on_exec makes only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(beamflow_kernels::inherit::close_fds_on_exec);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::msg(format!("cannot start `{what}`: {e}")))?;
    let _guard = GroupGuard(child.id().map(|id| id as i32));
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| Failure::msg(format!("waiting for the command: {e}")))?,
        _ = cancel.cancelled() => {
            // SIGTERM first: launchers (srun, mpirun) stop their ranks on
            // other nodes and scripts clean up; whatever is left after the
            // grace period gets SIGKILL from the guard.
            if let Some(pgid) = child.id() {
                // SAFETY: killpg only sends a signal to the group we created.
                unsafe {
                    libc::killpg(pgid as i32, libc::SIGTERM);
                }
            }
            let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
            return Err(Failure::Cancelled);
        }
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
        let mut error = {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
                None => format!("exit code {code}"),
            }
        };
        // A full disk also swallows the step's own complaint about it.
        if let Some(full) = full_disk(dir) {
            error.push_str(&format!("; {full}"));
        }
        if let Some(why) = std::fs::read_to_string(&stderr_path)
            .ok()
            .as_deref()
            .and_then(telling_line)
        {
            error.push_str(&format!(": {why}"));
        }
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

/// "No space left on device" with the file system's name, when the
/// attempt's directory is on a full file system (blocks or inodes).
fn full_disk(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is written by statvfs on success.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    let blocks_left = st.f_bavail as u64 * st.f_frsize as u64;
    let full = blocks_left < 64 * 1024 || (st.f_files > 0 && st.f_favail == 0);
    full.then(|| {
        format!(
            "No space left on device: the file system of {} has {} bytes free",
            dir.display(),
            blocks_left
        )
    })
}

/// What a signal that ended a step usually means, for its error message.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV: segmentation fault",
        libc::SIGABRT => "SIGABRT: aborted",
        libc::SIGBUS => "SIGBUS: bus error",
        libc::SIGFPE => "SIGFPE: arithmetic fault",
        libc::SIGILL => "SIGILL: illegal instruction",
        libc::SIGKILL => "SIGKILL: killed, e.g. out of memory",
        libc::SIGTERM => "SIGTERM: terminated",
        libc::SIGINT => "SIGINT: interrupted",
        libc::SIGXCPU => "SIGXCPU: CPU time limit",
        libc::SIGXFSZ => "SIGXFSZ: file size limit",
        libc::SIGPIPE => "SIGPIPE: broken pipe",
        _ => "signal",
    }
}

/// Whether an inherited variable looks like a secret: the pilot's own
/// token, and names that say token, secret, password, credentials or key.
/// (`SSH_AUTH_SOCK` stays: mpirun may start ranks on other hosts over ssh.)
/// Steps get the pilot's environment (site setup, modules, scheduler and
/// MPI variables) without these; a step's own `env` may still set them.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    const WORDS: &[&str] = &[
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "PRIVATE_KEY",
        "API_KEY",
        "ACCESS_KEY",
        "SESSION_KEY",
    ];
    WORDS.iter().any(|w| n.contains(w)) || n.starts_with("AWS_")
}

fn scrub_secrets(cmd: &mut tokio::process::Command) {
    for (k, _) in std::env::vars_os() {
        if secret_name(&k.to_string_lossy()) {
            cmd.env_remove(&k);
        }
    }
}

/// The line of a failed process's stderr that says why, where one does: a
/// failed allocation, a panic, or beamflow's own `error:` (the first, the
/// cause, rather than what followed it).
fn telling_line(stderr: &str) -> Option<&str> {
    const MARKS: [&str; 4] = [
        "memory allocation of",
        "panicked at",
        "error: ",
        "Segmentation fault",
    ];
    stderr
        .lines()
        .map(str::trim)
        .find(|l| MARKS.iter().any(|m| l.contains(m)))
}

fn tail_lines(path: &std::path::Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{secret_name, telling_line};

    #[test]
    fn the_line_that_says_why_is_found() {
        let stderr = "loading qmap\nmemory allocation of 103079215104 bytes failed\n\
                      thread 1 stack:\n  0: foo\n  1: bar\n  2: baz\n  3: qux\n  4: quux\n";
        assert_eq!(
            telling_line(stderr),
            Some("memory allocation of 103079215104 bytes failed")
        );
        assert_eq!(
            telling_line(
                "error: /d/q.h5: /qmap/dynamic_roi_map: bin 7 exceeds dynamic_num_pts (3)\n"
            ),
            Some("error: /d/q.h5: /qmap/dynamic_roi_map: bin 7 exceeds dynamic_num_pts (3)")
        );
        assert_eq!(telling_line("all fine\nthen exit 1\n"), None);
    }

    #[test]
    fn secret_looking_names_are_kept_from_steps() {
        for n in [
            "BEAMFLOW_TOKEN",
            "BEAMFLOW_TOKEN_FILE",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_PROFILE",
            "DB_PASSWORD",
            "globus_client_secret",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "PATH",
            "HOME",
            "SLURM_JOB_ID",
            "CUDA_VISIBLE_DEVICES",
            "LD_LIBRARY_PATH",
            "OMP_NUM_THREADS",
            "KEYBOARD",
        ] {
            assert!(!secret_name(n), "{n}");
        }
    }
}
