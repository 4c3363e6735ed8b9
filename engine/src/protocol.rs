//! Messages between server and pilots.
//!
//! One WebSocket per pilot; every frame carries a JSON array of messages so both
//! sides batch naturally under load (a frame holds whatever queued up while the
//! previous one was being written). Tasks are pushed to pilots and results are
//! pushed back: nothing on the dispatch or completion path polls.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::ActionKind;
use crate::resources::{ResourceRequest, Resources};
use crate::site::TransferPolicy;

/// Bumped on any incompatible change; the server refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Resources and placement facts a pilot reports when it connects.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PilotInfo {
    pub name: String,
    pub host: String,
    pub resources: Resources,
    /// GPU indices the pilot may hand out.
    pub gpu_ids: Vec<u32>,
    pub targets: Vec<String>,
    /// When the batch allocation ends (µs since epoch), if inside one.
    pub walltime_end_us: Option<i64>,
    /// Batch job id (PBS_JOBID / SLURM_JOB_ID) if inside one.
    pub batch_job: Option<String>,
    /// The reservation the batch job runs in: such pilots are kept for
    /// `realtime` steps and take other work only when idle.
    #[serde(default)]
    pub reservation: Option<String>,
    /// The site whose scheduler runs the pilot's job (job scripts say it):
    /// placement reads it, and job ids are matched at that site.
    #[serde(default)]
    pub site: Option<String>,
    /// The pilot's job may be preempted: losing it costs its steps nothing,
    /// and they are placed at another site first.
    #[serde(default)]
    pub preemptable: bool,
    pub prefetch: u32,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromPilot {
    /// First message on every connection. `pilot_id` is set on reconnects so the
    /// server can re-attach the pilot's running tasks instead of re-running them.
    Hello {
        protocol: u32,
        pilot_id: Option<u64>,
        info: PilotInfo,
        /// Every attempt the pilot holds: running, then queued in start order,
        /// then finished with a result not yet acknowledged (those results
        /// follow in the same frame).
        held: Vec<u64>,
    },
    Started {
        attempt: u64,
        at_us: i64,
    },
    Finished(TaskResult),
    /// Prefetched attempts the pilot will not start (it is draining); they go
    /// back to the queue without counting as a try.
    Returned {
        attempts: Vec<u64>,
    },
    /// The pilot takes no new work (walltime ending or shutting down).
    Draining {
        reason: String,
    },
    Heartbeat,
    /// The pilot is leaving on purpose; nothing it held is lost.
    Bye {
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToPilot {
    Welcome {
        pilot_id: u64,
        server_uid: String,
        heartbeat_s: f64,
        transfer: TransferPolicy,
    },
    Tasks {
        tasks: Vec<TaskSpec>,
    },
    /// Stop these attempts (kill their process groups).
    Cancel {
        attempts: Vec<u64>,
    },
    /// Results of these attempts are committed; the pilot may forget them.
    Ack {
        attempts: Vec<u64>,
    },
    /// Refuse: the message text says why (bad protocol, unknown pilot…).
    Refused {
        reason: String,
    },
}

/// One attempt of one step, fully rendered: the pilot needs nothing else.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    pub attempt: u64,
    pub run: u64,
    pub flow: String,
    pub step: String,
    pub action: ActionKind,
    pub kernel: Option<String>,
    pub params: Value,
    pub run_dir: String,
    pub task_dir: String,
    pub timeout_s: Option<f64>,
    pub resources: ResourceRequest,
    /// A kernel step runs in a process of its own: the flow asked for it,
    /// or an earlier attempt's pilot died while running it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolate: bool,
    /// Inputs to copy into the task directory before the action starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage: Vec<Stage>,
}

/// One input a pilot stages: `src` (a path, or `REMOTE:/path` at another
/// facility) copied into the directory `into` by the transfer backend its
/// place calls for, under the pilot's site's transfer rules.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub name: String,
    pub src: String,
    pub into: String,
}

impl Stage {
    /// `src` as (remote, path) when it is `REMOTE:/path`.
    fn split(&self) -> Option<(&str, &str)> {
        self.src.split_once(':').filter(|(n, _)| {
            !n.is_empty()
                && !self.src.starts_with(['/', '.', '~'])
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    }

    /// The remote the input is staged from; `None` for a local path.
    pub fn remote(&self) -> Option<&str> {
        self.split().map(|(r, _)| r)
    }

    /// Where the copy lands: `into` and the source's last path component.
    pub fn path(&self) -> String {
        let path = self.split().map_or(self.src.as_str(), |(_, p)| p);
        let name = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.name);
        format!("{}{name}", self.into)
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub attempt: u64,
    pub outcome: Outcome,
    pub outputs: Value,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub started_us: i64,
    pub finished_us: i64,
}

/// Longest time a frame may carry for a step timeout or the heartbeat
/// interval: a year, in seconds (`Duration` and the µs clocks hold it).
pub const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// Latest time a frame may carry, µs since the epoch: 2^53, where doubles
/// stop counting every µs (year 2255). Negative times are refused too.
pub const MAX_TIME_US: i64 = 1 << 53;

/// Largest count of cores or GPUs a frame may carry, as flows allow.
pub const MAX_AMOUNT: u32 = 1_000_000;

/// Decodes one frame from a pilot: a JSON array of messages whose numbers
/// are all in range. The error names the message and field at fault.
pub fn decode_from_pilot(text: &str) -> Result<Vec<FromPilot>, String> {
    let msgs: Vec<FromPilot> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (i, m) in msgs.iter().enumerate() {
        check_from_pilot(m).map_err(|e| format!("message {i}: {e}"))?;
    }
    Ok(msgs)
}

/// Decodes one frame from the server, as [`decode_from_pilot`] does.
pub fn decode_to_pilot(text: &str) -> Result<Vec<ToPilot>, String> {
    let msgs: Vec<ToPilot> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (i, m) in msgs.iter().enumerate() {
        check_to_pilot(m).map_err(|e| format!("message {i}: {e}"))?;
    }
    Ok(msgs)
}

fn check_time(field: &str, t: i64) -> Result<(), String> {
    if (0..=MAX_TIME_US).contains(&t) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {t} is not a time in µs since the epoch (0 to {MAX_TIME_US})"
        ))
    }
}

fn check_seconds(field: &str, s: f64) -> Result<(), String> {
    if (0.0..=MAX_SECONDS).contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {s:?} is not a number of seconds (0 to {MAX_SECONDS})"
        ))
    }
}

fn check_resources(field: &str, r: &Resources) -> Result<(), String> {
    for (what, v) in [("cpus", r.cpus), ("gpus", r.gpus)] {
        if v > MAX_AMOUNT {
            return Err(format!("{field}.{what}: {v} is more than {MAX_AMOUNT}"));
        }
    }
    if r.memory_mb > crate::units::MAX_MEMORY_MB {
        return Err(format!(
            "{field}.memory_mb: {} is more than {}",
            r.memory_mb,
            crate::units::MAX_MEMORY_MB
        ));
    }
    for (what, v) in [("nodes", r.nodes), ("ranks_per_node", r.ranks_per_node)] {
        if !(1..=MAX_AMOUNT).contains(&v) {
            return Err(format!("{field}.{what}: {v} is not from 1 to {MAX_AMOUNT}"));
        }
    }
    Ok(())
}

fn check_from_pilot(m: &FromPilot) -> Result<(), String> {
    match m {
        FromPilot::Hello { info, .. } => {
            check_resources("hello.info.resources", &info.resources)?;
            if let Some(t) = info.walltime_end_us {
                check_time("hello.info.walltime_end_us", t)?;
            }
            Ok(())
        }
        FromPilot::Started { at_us, .. } => check_time("started.at_us", *at_us),
        FromPilot::Finished(r) => {
            check_time("finished.started_us", r.started_us)?;
            check_time("finished.finished_us", r.finished_us)?;
            if !r.outputs.is_object() {
                return Err("finished.outputs: must be a JSON object".into());
            }
            Ok(())
        }
        FromPilot::Returned { .. }
        | FromPilot::Draining { .. }
        | FromPilot::Heartbeat
        | FromPilot::Bye { .. } => Ok(()),
    }
}

fn check_to_pilot(m: &ToPilot) -> Result<(), String> {
    match m {
        ToPilot::Welcome { heartbeat_s, .. } => check_seconds("welcome.heartbeat_s", *heartbeat_s),
        ToPilot::Tasks { tasks } => {
            for (i, t) in tasks.iter().enumerate() {
                let at = format!("tasks[{i}] (attempt {})", t.attempt);
                if let Some(s) = t.timeout_s {
                    check_seconds(&format!("{at}.timeout_s"), s)?;
                }
                if t.resources.variants.is_empty() {
                    return Err(format!("{at}.resources: no variant"));
                }
                for (j, v) in t.resources.variants.iter().enumerate() {
                    check_resources(&format!("{at}.resources.variants[{j}]"), v)?;
                }
                if !t.params.is_object() {
                    return Err(format!("{at}.params: must be a JSON object"));
                }
            }
            Ok(())
        }
        ToPilot::Cancel { .. } | ToPilot::Ack { .. } | ToPilot::Refused { .. } => Ok(()),
    }
}
