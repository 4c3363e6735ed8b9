//! Slurm text output (22.05 and later). State is polled with text commands,
//! not `--json`: 22.05's `squeue --json` ignores its filters and reports raw
//! wait statuses, and the JSON layout changes from 23.02 on
//! (reference/slurm.md §3).

use std::collections::BTreeMap;

use super::{End, JobId, JobState, ParseError};

/// `sbatch` stdout: `Submitted batch job N`, or with `--parsable` `N` or
/// `N;cluster`.
pub fn parse_sbatch(out: &str) -> Result<JobId, ParseError> {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let id = line
        .strip_prefix("Submitted batch job ")
        .unwrap_or(line)
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(JobId(id.to_string()))
    } else {
        Err(ParseError::new("sbatch", out))
    }
}

/// The squeue format string [`parse_squeue`] reads.
pub const SQUEUE_FORMAT: &str = "%i|%T|%r";

/// `squeue -h -t all -o '%i|%T|%r'`: one `id|STATE|reason` per job.
/// Exit codes are not in squeue; finished jobs report `exit: None` here.
pub fn parse_squeue(out: &str) -> Result<BTreeMap<JobId, JobState>, ParseError> {
    let mut jobs = BTreeMap::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut f = line.splitn(3, '|');
        let (Some(id), Some(state), reason) = (f.next(), f.next(), f.next()) else {
            return Err(ParseError::new("squeue", line));
        };
        let st = state_from_slurm(state, reason.unwrap_or(""), None)
            .ok_or_else(|| ParseError::new("squeue", line))?;
        jobs.insert(JobId(id.to_string()), st);
    }
    Ok(jobs)
}

/// `scontrol show job -o ID`: one line of `Key=Value` pairs. A value runs
/// to the next ` Key=` (values such as `Command=` contain spaces).
pub fn parse_scontrol_oneline(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut key: Option<&str> = None;
    let mut value = String::new();
    for word in line.trim().split(' ') {
        // Keys are CamelCase words (`JobId`, `AllocNode:Sid`, `TRES`).
        let starts_pair = word.split_once('=').is_some_and(|(k, _)| {
            k.starts_with(|c: char| c.is_ascii_uppercase())
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '/')
        });
        if starts_pair {
            if let Some(k) = key.take() {
                out.insert(k.to_string(), std::mem::take(&mut value));
            }
            let (k, v) = word.split_once('=').expect("checked");
            key = Some(k);
            value = v.to_string();
        } else if key.is_some() {
            value.push(' ');
            value.push_str(word);
        }
    }
    if let Some(k) = key {
        out.insert(k.to_string(), value);
    }
    out
}

/// A job's state from `scontrol show job -o`, with its exit code.
pub fn parse_scontrol_state(line: &str) -> Result<JobState, ParseError> {
    let kv = parse_scontrol_oneline(line);
    let state = kv
        .get("JobState")
        .ok_or_else(|| ParseError::new("scontrol", line))?;
    let exit = kv
        .get("ExitCode")
        .and_then(|e| e.split(':').next())
        .and_then(|c| c.parse::<i32>().ok());
    let reason = kv.get("Reason").map(String::as_str).unwrap_or("");
    state_from_slurm(state, reason, exit).ok_or_else(|| ParseError::new("scontrol", line))
}

/// A Slurm job state name (`CANCELLED by 0` and `COMPLETING` included).
pub fn state_from_slurm(state: &str, reason: &str, exit: Option<i32>) -> Option<JobState> {
    let word = state.split_whitespace().next().unwrap_or("");
    let reason = if reason == "None" { "" } else { reason };
    let done = |end| Some(JobState::Finished { end, exit });
    match word {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SUSPENDED"
        | "STOPPED" | "CONFIGURING" | "SPECIAL_EXIT" | "RESIZING" => Some(JobState::Queued {
            reason: reason.to_string(),
        }),
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" => Some(JobState::Running),
        "COMPLETED" => done(End::Completed),
        "FAILED" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" => done(End::Failed),
        "CANCELLED" | "REVOKED" | "PREEMPTED" => done(End::Cancelled),
        "TIMEOUT" => done(End::Timeout),
        "NODE_FAIL" => done(End::NodeFail),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/slurm/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}{name}")).unwrap()
    }

    #[test]
    fn sbatch_output_in_every_form() {
        assert_eq!(parse_sbatch(&fixture("sbatch.out")).unwrap().0, "6");
        assert_eq!(
            parse_sbatch(&fixture("sbatch_parsable.out")).unwrap().0,
            "7"
        );
        assert_eq!(parse_sbatch("46;ci\n").unwrap().0, "46");
        let e = parse_sbatch(&fixture("sbatch_bad_reservation.err")).unwrap_err();
        assert!(e.raw.contains("Requested reservation is invalid"), "{e}");
    }

    #[test]
    fn squeue_states_recorded_from_a_real_cluster() {
        let jobs = parse_squeue(&fixture("squeue_all.out")).unwrap();
        assert_eq!(jobs.len(), 11);
        let st = |id: &str| jobs[&JobId(id.into())].clone();
        assert_eq!(st("8"), JobState::Running);
        assert_eq!(
            st("11"),
            JobState::Queued {
                reason: "Dependency".into()
            }
        );
        assert_eq!(
            st("6"),
            JobState::Finished {
                end: End::Failed,
                exit: None
            }
        );
        assert_eq!(
            st("10"),
            JobState::Finished {
                end: End::Cancelled,
                exit: None
            }
        );
        assert_eq!(
            st("1"),
            JobState::Finished {
                end: End::Completed,
                exit: None
            }
        );
        let e = parse_squeue("8|WARPING|None\n").unwrap_err();
        assert_eq!(e.raw, "8|WARPING|None");
        assert!(parse_squeue(&fixture("squeue_unknown.err")).is_err());
    }

    #[test]
    fn scontrol_lines_with_exit_codes() {
        let failed = fixture("scontrol_failed.out");
        assert_eq!(
            parse_scontrol_state(&failed).unwrap(),
            JobState::Finished {
                end: End::Failed,
                exit: Some(7)
            }
        );
        let kv = parse_scontrol_oneline(&failed);
        assert_eq!(kv["JobId"], "6");
        assert_eq!(kv["Partition"], "debug");
        assert_eq!(kv["Command"], "(null)");
        assert_eq!(kv["AllocNode:Sid"].split(':').next(), Some("localhost"));
        let kv = parse_scontrol_oneline("JobId=5 Command=/bin/echo a b=c WorkDir=/tmp");
        assert_eq!(kv["Command"], "/bin/echo a b=c");
        assert_eq!(kv["WorkDir"], "/tmp");
        assert_eq!(
            parse_scontrol_state(&fixture("scontrol_running.out")).unwrap(),
            JobState::Running
        );
        assert_eq!(
            parse_scontrol_state(&fixture("scontrol_cancelled.out")).unwrap(),
            JobState::Finished {
                end: End::Cancelled,
                exit: Some(0)
            }
        );
        assert_eq!(
            state_from_slurm("CANCELLED by 0", "None", Some(0)),
            Some(JobState::Finished {
                end: End::Cancelled,
                exit: Some(0)
            })
        );
        assert!(parse_scontrol_state("slurm_load_jobs error: Invalid job id specified").is_err());
    }
}
