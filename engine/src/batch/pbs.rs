//! PBS Pro / OpenPBS output (reference/slurm.md §5): `qsub` ids, `qstat -f`
//! (wrapped at 78 columns with TAB continuations) and `qstat -f -F json -x`,
//! and qstat's exit codes (35: finished, use -x; 153: unknown job).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{End, JobId, JobState, ParseError};

/// `qsub` stdout: the full `<seq>.<server>` id (`1234[].server` for arrays).
pub fn parse_qsub(out: &str) -> Result<JobId, ParseError> {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let seq = line.split('.').next().unwrap_or("");
    let seq = seq.strip_suffix("[]").unwrap_or(seq);
    if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && !line.contains(' ') {
        Ok(JobId(line.to_string()))
    } else {
        Err(ParseError::new("qsub", out))
    }
}

/// What qstat's exit status says about the ids asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QstatRc {
    Ok,
    /// 35 (PBSE_HISTJOBID): a job has finished; ask again with `-x`.
    Finished,
    /// 153 (PBSE_UNKJOBID): an id the server does not know (the output
    /// for the other ids is still valid).
    Unknown,
    Other(i32),
}

pub fn classify_qstat_rc(rc: i32) -> QstatRc {
    match rc {
        0 => QstatRc::Ok,
        35 => QstatRc::Finished,
        153 => QstatRc::Unknown,
        other => QstatRc::Other(other),
    }
}

/// `qstat -f`: jobs by id, each a map of attribute → value with wrapped
/// values joined back.
pub fn parse_qstat_f(out: &str) -> Result<BTreeMap<JobId, BTreeMap<String, String>>, ParseError> {
    let mut jobs = BTreeMap::new();
    let mut current: Option<(JobId, BTreeMap<String, String>)> = None;
    let mut last_key: Option<String> = None;
    for line in out.lines() {
        if let Some(id) = line.strip_prefix("Job Id: ") {
            if let Some((id, attrs)) = current.take() {
                jobs.insert(id, attrs);
            }
            current = Some((JobId(id.trim().to_string()), BTreeMap::new()));
            last_key = None;
        } else if let Some(rest) = line.strip_prefix('\t') {
            // A continuation of the previous value (wrapped at 78 columns).
            let (Some((_, attrs)), Some(k)) = (current.as_mut(), last_key.as_ref()) else {
                return Err(ParseError::new("qstat -f", line));
            };
            attrs
                .get_mut(k)
                .expect("last key present")
                .push_str(rest.trim_end());
        } else if line.trim().is_empty() {
            last_key = None;
        } else {
            let Some((k, v)) = line.trim().split_once(" = ") else {
                return Err(ParseError::new("qstat -f", line));
            };
            let Some((_, attrs)) = current.as_mut() else {
                return Err(ParseError::new("qstat -f", line));
            };
            attrs.insert(k.to_string(), v.to_string());
            last_key = Some(k.to_string());
        }
    }
    if let Some((id, attrs)) = current {
        jobs.insert(id, attrs);
    }
    Ok(jobs)
}

/// The state of each job in `qstat -f` output.
pub fn states_from_qstat_f(out: &str) -> Result<BTreeMap<JobId, JobState>, ParseError> {
    parse_qstat_f(out)?
        .into_iter()
        .map(|(id, a)| {
            let letter = a.get("job_state").map(String::as_str).unwrap_or("");
            let exit = a
                .get("Exit_status")
                .and_then(|e| e.trim().parse::<i64>().ok());
            let comment = a.get("comment").cloned().unwrap_or_default();
            let st = state_from_pbs(letter, exit, &comment)
                .ok_or_else(|| ParseError::new("qstat -f job_state", letter))?;
            Ok((id, st))
        })
        .collect()
}

/// `qstat -f -F json [-x]`: the state of each job under `Jobs`. cJSON turns
/// numeric-looking strings into numbers, so values are read either way.
pub fn states_from_qstat_json(out: &str) -> Result<BTreeMap<JobId, JobState>, ParseError> {
    let doc: Value =
        serde_json::from_str(out).map_err(|_| ParseError::new("qstat -F json", out))?;
    let Some(jobs) = doc.get("Jobs") else {
        // No job matched: qstat prints the header only.
        return if doc.is_object() {
            Ok(BTreeMap::new())
        } else {
            Err(ParseError::new("qstat -F json", out))
        };
    };
    let jobs = jobs
        .as_object()
        .ok_or_else(|| ParseError::new("qstat -F json Jobs", out))?;
    jobs.iter()
        .map(|(id, j)| {
            let letter = j.get("job_state").and_then(Value::as_str).unwrap_or("");
            let exit = j.get("Exit_status").and_then(|e| {
                e.as_i64()
                    .or_else(|| e.as_str().and_then(|s| s.trim().parse().ok()))
            });
            let comment = j.get("comment").and_then(Value::as_str).unwrap_or("");
            let st = state_from_pbs(letter, exit, comment)
                .ok_or_else(|| ParseError::new("qstat -F json job_state", &j.to_string()))?;
            Ok((JobId(id.clone()), st))
        })
        .collect()
}

/// A `job_state` letter, with `Exit_status` for finished jobs: 0–255 the
/// script's status, 256 + signal when killed (265 SIGKILL / 271 SIGTERM are
/// a `qdel`), negative for PBS-side failures (−29: walltime exceeded).
pub fn state_from_pbs(letter: &str, exit: Option<i64>, comment: &str) -> Option<JobState> {
    match letter {
        "Q" | "H" | "W" | "T" | "M" | "S" | "U" => Some(JobState::Queued {
            reason: comment.to_string(),
        }),
        "R" | "E" | "B" => Some(JobState::Running),
        "F" | "X" => {
            let (end, code) = match exit {
                Some(0) => (End::Completed, Some(0)),
                Some(-29) => (End::Timeout, None),
                Some(e) if e < 0 => (End::NodeFail, None),
                Some(e) if e > 256 => (End::Cancelled, None),
                Some(e) => (End::Failed, Some(e as i32)),
                None => (End::Failed, None),
            };
            Some(JobState::Finished { end, exit: code })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/pbs/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}{name}")).unwrap()
    }

    const ID: &str = "349710.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov";

    #[test]
    fn qsub_ids_and_errors() {
        assert_eq!(parse_qsub(&fixture("qsub.out")).unwrap().0, ID);
        assert_eq!(parse_qsub("1234[].pbs01\n").unwrap().0, "1234[].pbs01");
        let e = parse_qsub(&fixture("qsub_no_account.err")).unwrap_err();
        assert!(e.raw.contains("Account_Name is required"), "{e}");
    }

    #[test]
    fn qstat_f_joins_wrapped_values() {
        let jobs = parse_qstat_f(&fixture("qstat_f.out")).unwrap();
        assert_eq!(jobs.len(), 2);
        let a = &jobs[&JobId(ID.into())];
        assert_eq!(a["Resource_List.select"], "2:system=polaris");
        assert_eq!(
            a["exec_vnode"],
            "(x3006c0s13b1n0:ngpus=4:ncpus=64)+(x3006c0s19b0n0:ngpus=4:ncpus=64)"
        );
        assert!(
            a["Variable_List"].ends_with("PBS_O_WORKDIR=/home/user/beamflow,PBS_O_SYSTEM=Linux")
        );
        let st = states_from_qstat_f(&fixture("qstat_f.out")).unwrap();
        assert_eq!(st[&JobId(ID.into())], JobState::Running);
        let queued = st
            .values()
            .find(|s| matches!(s, JobState::Queued { .. }))
            .unwrap();
        assert_eq!(
            *queued,
            JobState::Queued {
                reason: "Not Running: Not enough free nodes available".into()
            }
        );
        assert!(
            parse_qstat_f("    job_state = R\n").is_err(),
            "an attribute before any Job Id"
        );
    }

    #[test]
    fn qstat_json_history_and_exit_statuses() {
        let st = states_from_qstat_json(&fixture("qstat_fx_json.out")).unwrap();
        let get = |seq: &str| {
            st[&JobId(format!("{seq}.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"))].clone()
        };
        assert_eq!(
            get("349710"),
            JobState::Finished {
                end: End::Completed,
                exit: Some(0)
            }
        );
        assert_eq!(
            get("349712"),
            JobState::Finished {
                end: End::Cancelled,
                exit: None
            }
        );
        assert_eq!(
            get("349713"),
            JobState::Finished {
                end: End::Timeout,
                exit: None
            }
        );
        assert_eq!(get("349714"), JobState::Running);
        assert!(states_from_qstat_json("{\"timestamp\": 1}")
            .unwrap()
            .is_empty());
        assert!(states_from_qstat_json("qstat: cannot connect to server").is_err());
    }

    #[test]
    fn qstat_exit_codes_for_finished_and_unknown_jobs() {
        assert_eq!(classify_qstat_rc(35), QstatRc::Finished);
        assert_eq!(classify_qstat_rc(153), QstatRc::Unknown);
        assert_eq!(classify_qstat_rc(2), QstatRc::Other(2));
        assert!(fixture("qstat_finished_rc35.err").contains("use -x or -H"));
        assert!(fixture("qstat_unknown_rc153.err").starts_with("qstat: Unknown Job Id"));
        assert_eq!(state_from_pbs("Z", None, ""), None);
    }
}
