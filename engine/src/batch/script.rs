//! Pilot job scripts, rendered from one template per scheduler.
//!
//! A script starts one pilot per node (mpiexec `--ppn 1` on PBS, srun
//! `--ntasks-per-node=1` on Slurm); each pilot then places tasks on its own
//! node's cores and GPUs. The server's address goes on the command line, the
//! token never does: pilots read it from a file only the user can read, so
//! it shows neither in `ps` nor in the copy of the script the scheduler keeps.

use std::path::PathBuf;

use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

use crate::site::{fmt_walltime, EffectiveTarget, PilotPer, Scheduler};

const PBS: &str = include_str!("templates/pbs.sh.j2");
const SLURM: &str = include_str!("templates/slurm.sh.j2");

/// One allocation to render.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRequest {
    pub target: EffectiveTarget,
    /// Job name as the scheduler shows it.
    pub name: String,
    pub nodes: u32,
    pub walltime_s: u64,
    /// Overrides the target's standing reservation.
    pub reservation: Option<String>,
    /// The allocation's directory: the script, its output, the job id.
    pub dir: PathBuf,
    pub pilot: PilotCommand,
}

/// How the pilot is invoked on each node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PilotCommand {
    pub exe: String,
    pub url: String,
    pub token_file: PathBuf,
    /// The server's certificate, which the pilots pin (an https URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    /// Targets the pilots serve.
    pub targets: Vec<String>,
    /// Leave after this long without work; `None`: stay until the walltime.
    pub idle_timeout_s: Option<u64>,
    pub prefetch: u32,
    pub drain_margin_s: u64,
}

impl PilotCommand {
    /// The pilot command for `target`: the site's `pilot` settings where it
    /// has them (executable, server URL, prefetch, drain margin), else
    /// `exe` and `url` and the defaults.
    pub fn for_target(
        target: &EffectiveTarget,
        exe: &str,
        url: &str,
        token_file: PathBuf,
        targets: Vec<String>,
        idle_timeout_s: u64,
    ) -> Self {
        let p = &target.pilot;
        PilotCommand {
            exe: p.command.clone().unwrap_or_else(|| exe.to_string()),
            url: p.server_url.clone().unwrap_or_else(|| url.to_string()),
            token_file,
            server_cert: None,
            targets,
            idle_timeout_s: (idle_timeout_s > 0).then_some(idle_timeout_s),
            prefetch: p.prefetch.unwrap_or(1),
            drain_margin_s: p
                .drain_margin
                .as_deref()
                .and_then(|d| crate::units::parse_duration(d).ok())
                .unwrap_or(60.0) as u64,
        }
    }

    /// The same pilots, pinning `cert` when they connect over TLS (a
    /// certificate means nothing to an http:// URL, so it is left out).
    pub fn pinning(mut self, cert: Option<PathBuf>) -> Self {
        self.server_cert = cert.filter(|_| self.url.starts_with("https://"));
        self
    }
}

impl JobRequest {
    /// Checks the request against the target's limits.
    pub fn check(&self) -> anyhow::Result<()> {
        self.target
            .check_job(self.nodes, self.walltime_s)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The job script.
    pub fn render(&self) -> anyhow::Result<String> {
        self.check()?;
        let t = &self.target;
        let mut env = Environment::new();
        env.set_keep_trailing_newline(true);
        env.add_filter("sh", |s: String| shell_quote(&s));
        let template = match t.scheduler {
            Scheduler::Pbs => PBS,
            Scheduler::Slurm => SLURM,
            Scheduler::Local => unreachable!("checked above"),
        };
        env.add_template("job", template)?;
        let reservation = self.reservation.clone().or_else(|| t.reservation.clone());
        // PBS sends jobs to a reservation through the reservation's queue.
        let queue = match (t.scheduler, &reservation) {
            (Scheduler::Pbs, Some(r)) => Some(r.clone()),
            _ => t.queue.clone(),
        };
        let cpus = t.cpus_per_node.map(|c| c * t.threads_per_core.max(1));
        let out = env.get_template("job")?.render(context! {
            name => self.name,
            site => t.site,
            target => t.target,
            account => t.account,
            queue => queue,
            qos => t.qos,
            constraint => t.constraint,
            reservation => reservation,
            select => t.select,
            filesystems => t.filesystems,
            nodes => self.nodes,
            cpus => cpus,
            gpus => t.gpus_per_node.filter(|&g| g > 0),
            walltime => fmt_walltime(self.walltime_s),
            walltime_s => self.walltime_s,
            dir => self.dir.display().to_string(),
            directives => t.directives,
            setup => t.setup,
            launcher => t.launcher,
            span_job => t.pilot_per == PilotPer::Job,
            rerunnable => t.preemptable,
            pilot => self.pilot_line(&reservation),
        })?;
        Ok(out)
    }

    fn pilot_line(&self, reservation: &Option<String>) -> String {
        let p = &self.pilot;
        let mut a = vec![
            shell_quote(&p.exe),
            "pilot".to_string(),
            "--url".to_string(),
            shell_quote(&p.url),
            "--token-file".to_string(),
            shell_quote(&p.token_file.display().to_string()),
            "--targets".to_string(),
            shell_quote(&p.targets.join(",")),
            "--prefetch".to_string(),
            p.prefetch.to_string(),
            "--idle-timeout".to_string(),
            format!("{}s", p.idle_timeout_s.unwrap_or(0)),
            "--drain-margin".to_string(),
            format!("{}s", p.drain_margin_s),
        ];
        if let Some(cert) = &p.server_cert {
            a.push("--server-cert".to_string());
            a.push(shell_quote(&cert.display().to_string()));
        }
        if let Some(c) = self.target.cpus_per_node {
            a.push("--cpus".to_string());
            a.push(c.to_string());
        }
        // Only NVIDIA nodes can be probed without the vendor's runtime: say
        // which devices there are.
        if let Some(g) = self.target.gpus_per_node.filter(|&g| g > 0) {
            a.push("--gpus".to_string());
            a.push((0..g).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        }
        if let Some(v) = &self.target.gpu_env {
            a.push("--gpu-env".to_string());
            a.push(shell_quote(v));
        }
        if let Some(r) = reservation {
            a.push("--reservation".to_string());
            a.push(shell_quote(r));
        }
        a.push("--site".to_string());
        a.push(shell_quote(&self.target.site));
        if self.target.preemptable {
            a.push("--preemptable".to_string());
        }
        if self.target.pilot_per == PilotPer::Job {
            a.push("--span-job".to_string());
            if let Some(f) = &self.target.launcher {
                a.push("--launcher-flags".to_string());
                a.push(shell_quote(f));
            }
        }
        a.join(" ")
    }
}

/// Quotes `s` for a POSIX shell unless it is plainly safe.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }
}
