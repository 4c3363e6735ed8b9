//! Submit, poll and cancel pilot jobs through the scheduler's commands.
//! Commands run with a timeout and without the API token in their
//! environment; a command that fails or prints something unexpected is an
//! error carrying its output verbatim.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::{pbs, slurm, JobId, JobState, ParseError};

/// Why a scheduler command did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{cmd}: exit {rc}: {stderr}{stdout}")]
    Command {
        cmd: String,
        rc: i32,
        stdout: String,
        stderr: String,
    },
    #[error("{cmd}: {error}")]
    Spawn { cmd: String, error: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Which scheduler a site uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Slurm,
    Pbs,
}

impl Scheduler {
    /// The adapter for a site's scheduler; `None` for sites without one.
    pub fn for_site(s: crate::site::Scheduler) -> Option<Self> {
        match s {
            crate::site::Scheduler::Slurm => Some(Scheduler::Slurm),
            crate::site::Scheduler::Pbs => Some(Scheduler::Pbs),
            crate::site::Scheduler::Local => None,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "slurm" => Some(Scheduler::Slurm),
            "pbs" => Some(Scheduler::Pbs),
            _ => None,
        }
    }
}

/// What a command printed.
struct Output {
    rc: i32,
    stdout: String,
    stderr: String,
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

async fn run(argv: &[&str], dir: Option<&Path>) -> Result<Output, BatchError> {
    let cmd = argv.join(" ");
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_remove("BEAMFLOW_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, c.output())
        .await
        .map_err(|_| BatchError::Spawn {
            cmd: cmd.clone(),
            error: format!("no answer within {}s", COMMAND_TIMEOUT.as_secs()),
        })?
        .map_err(|e| BatchError::Spawn {
            cmd: cmd.clone(),
            error: e.to_string(),
        })?;
    Ok(Output {
        rc: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn failed(argv: &[&str], o: Output) -> BatchError {
    BatchError::Command {
        cmd: argv.join(" "),
        rc: o.rc,
        stdout: o.stdout,
        stderr: o.stderr,
    }
}

/// Runs `argv`; a non-zero exit is an error.
async fn checked(argv: &[&str], dir: Option<&Path>) -> Result<String, BatchError> {
    let o = run(argv, dir).await?;
    if o.rc != 0 {
        return Err(failed(argv, o));
    }
    Ok(o.stdout)
}

impl Scheduler {
    /// Submits `script` from `dir` (where the job's output files go).
    pub async fn submit(self, script: &Path, dir: &Path) -> Result<JobId, BatchError> {
        let s = script.to_string_lossy();
        match self {
            Scheduler::Slurm => {
                let argv = ["sbatch", "--parsable", &s];
                Ok(slurm::parse_sbatch(&checked(&argv, Some(dir)).await?)?)
            }
            Scheduler::Pbs => {
                let argv = ["qsub", &s];
                Ok(pbs::parse_qsub(&checked(&argv, Some(dir)).await?)?)
            }
        }
    }

    /// The state of `ids`; an id the scheduler no longer knows is absent.
    pub async fn status(self, ids: &[JobId]) -> Result<BTreeMap<JobId, JobState>, BatchError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let list = ids
            .iter()
            .map(|i| i.0.as_str())
            .collect::<Vec<_>>()
            .join(",");
        match self {
            Scheduler::Slurm => {
                let argv = [
                    "squeue",
                    "-h",
                    "-t",
                    "all",
                    "-j",
                    &list,
                    "-o",
                    slurm::SQUEUE_FORMAT,
                ];
                let o = run(&argv, None).await?;
                // A list of only unknown ids is rc 1 "Invalid job id specified".
                if o.rc != 0 {
                    if o.stderr.contains("Invalid job id") {
                        return Ok(BTreeMap::new());
                    }
                    return Err(failed(&argv, o));
                }
                let mut states = slurm::parse_squeue(&o.stdout)?;
                // squeue has no exit codes: ask scontrol for finished jobs.
                for (id, st) in states.iter_mut() {
                    if matches!(st, JobState::Finished { .. }) {
                        let argv = ["scontrol", "show", "job", "-o", &id.0];
                        if let Ok(line) = checked(&argv, None).await {
                            *st = slurm::parse_scontrol_state(&line)?;
                        }
                    }
                }
                Ok(states)
            }
            Scheduler::Pbs => {
                let mut argv = vec!["qstat", "-f", "-F", "json", "-x"];
                argv.extend(ids.iter().map(|i| i.0.as_str()));
                let o = run(&argv, None).await?;
                match pbs::classify_qstat_rc(o.rc) {
                    // The valid ids are still printed when some are unknown.
                    pbs::QstatRc::Ok | pbs::QstatRc::Unknown | pbs::QstatRc::Finished => {
                        if o.stdout.trim().is_empty() {
                            return Ok(BTreeMap::new());
                        }
                        Ok(pbs::states_from_qstat_json(&o.stdout)?)
                    }
                    pbs::QstatRc::Other(_) => Err(failed(&argv, o)),
                }
            }
        }
    }

    /// [`Scheduler::status`] of ids as the allocation manager keeps them
    /// (strings), the error as its text: what the server and an agent both
    /// answer a status request with.
    pub async fn states(self, jobs: &[String]) -> Result<BTreeMap<String, JobState>, String> {
        let ids: Vec<JobId> = jobs.iter().map(|j| JobId(j.clone())).collect();
        self.status(&ids)
            .await
            .map(|m| m.into_iter().map(|(k, v)| (k.0, v)).collect())
            .map_err(|e| e.to_string())
    }

    /// [`Scheduler::cancel`] of ids kept as strings, the error as its text.
    pub async fn cancel_all(self, jobs: &[String]) -> Result<(), String> {
        let ids: Vec<JobId> = jobs.iter().map(|j| JobId(j.clone())).collect();
        self.cancel(&ids).await.map_err(|e| e.to_string())
    }

    /// Jobs named `name` that were submitted from `dir`, finished ones
    /// included while the scheduler remembers them: how a submission whose
    /// answer was lost (the submitter killed between `sbatch` and writing
    /// down the id) is found again instead of submitted twice.
    pub async fn find(self, name: &str, dir: &Path) -> Result<Vec<JobId>, BatchError> {
        match self {
            Scheduler::Slurm => {
                let argv = ["squeue", "-h", "-t", "all", "-n", name, "-o", "%i|%Z"];
                let out = checked(&argv, None).await?;
                let want = dir.to_string_lossy();
                Ok(out
                    .lines()
                    .filter_map(|l| l.trim().split_once('|'))
                    .filter(|(_, d)| d.trim_end_matches('/') == want.trim_end_matches('/'))
                    .map(|(id, _)| JobId(id.trim().to_string()))
                    .collect())
            }
            Scheduler::Pbs => {
                // qselect has no working directory; the name carries the
                // queue and number, unique within one agent's directory.
                let argv = ["qselect", "-x", "-N", name];
                let out = checked(&argv, None).await?;
                Ok(out
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| JobId(l.to_string()))
                    .collect())
            }
        }
    }

    /// Cancels `ids` (finished or unknown ids are not an error).
    pub async fn cancel(self, ids: &[JobId]) -> Result<(), BatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut argv = vec![match self {
            Scheduler::Slurm => "scancel",
            Scheduler::Pbs => "qdel",
        }];
        argv.extend(ids.iter().map(|i| i.0.as_str()));
        let o = run(&argv, None).await?;
        let benign = o.rc == 0
            || (self == Scheduler::Pbs
                && matches!(
                    pbs::classify_qstat_rc(o.rc),
                    pbs::QstatRc::Finished | pbs::QstatRc::Unknown
                ));
        if benign {
            Ok(())
        } else {
            Err(failed(&argv, o))
        }
    }
}
