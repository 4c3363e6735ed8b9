//! Messages between server and pilots.
//!
//! One WebSocket per pilot; every frame carries a JSON array of messages so both
//! sides batch naturally under load (a frame holds whatever queued up while the
//! previous one was being written). Tasks are pushed to pilots and results are
//! pushed back: nothing on the dispatch or completion path polls.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::{ActionKind, ResourceRequest, Resources};
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
