//! The allocation manager: pilot batch jobs submitted on demand.
//!
//! An *allocation queue* ties a site target (queue, account, node shape) to
//! limits (jobs, nodes, walltime) and, for beamtime, a reservation window with
//! a number of pilots kept warm. The server's core asks the [`Manager`] what
//! to do whenever demand or pilots change; the manager answers with commands
//! (submit, poll, cancel) that the server runs off the core's thread, and
//! learns when jobs start and end from their pilots connecting and leaving.
//! Polling the scheduler is only a slow fallback.

pub mod manager;
pub mod queue;
mod route;

use serde::{Deserialize, Serialize};

use crate::site::EffectiveTarget;

pub use manager::Manager;
pub use queue::{Command, Demand};

/// What `beamflow alloc add` asks for; stored with the queue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueueSpec {
    /// The site target, resolved by the client from its site config, so the
    /// queue does not depend on files the server may not see.
    pub target: EffectiveTarget,
    /// Jobs queued or running at once.
    pub max_jobs: u32,
    /// Nodes over all jobs at once.
    pub max_nodes: Option<u32>,
    /// Jobs waiting in the scheduler's queue at once.
    pub backlog: u32,
    pub nodes_per_job: u32,
    pub walltime_s: u64,
    /// Pilots leave after this long without work (0: never, until walltime).
    pub idle_timeout_s: u64,
    pub reservation: Option<Reservation>,
}

/// A reservation held for a beamtime: pilots kept warm in it during a window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reservation {
    pub name: String,
    /// Window (µs since epoch); `None` ends are open.
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    /// Pilot nodes kept queued or running during the window, work or not.
    pub warm: u32,
}

impl QueueSpec {
    /// Targets the queue's pilots serve.
    pub fn serves(&self) -> Vec<String> {
        serves(&self.target.target, self.reservation.is_some())
    }

    /// Targets whose waiting tasks make this queue submit.
    pub fn demand_targets(&self) -> Vec<String> {
        match &self.reservation {
            Some(_) => vec!["realtime".to_string()],
            None => vec![self.target.target.clone()],
        }
    }
}

/// Targets pilots for `target` serve: in a reservation, `realtime` first and
/// `target` when idle.
pub fn serves(target: &str, in_reservation: bool) -> Vec<String> {
    let mut t = Vec::new();
    if in_reservation {
        t.push("realtime".to_string());
    }
    if !t.iter().any(|x| x == target) {
        t.push(target.to_string());
    }
    t
}

/// One queue as `alloc list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueInfo {
    pub id: u64,
    pub spec: QueueSpec,
    pub state: String,
    pub paused_reason: Option<String>,
    pub queued_jobs: u32,
    pub running_jobs: u32,
    pub ended_jobs: u32,
    pub submit_failures: u32,
    pub start_failures: u32,
    pub next_submit_us: Option<i64>,
    pub jobs: Vec<JobInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobInfo {
    pub job_id: String,
    pub number: u32,
    pub nodes: u32,
    pub state: String,
    pub dir: String,
    pub submitted_us: i64,
    pub started_us: Option<i64>,
    pub ended_us: Option<i64>,
    pub reason: Option<String>,
    pub pilots: Vec<u64>,
}

/// One line of `alloc log`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub queue: u64,
    pub at_us: i64,
    pub level: String,
    pub message: String,
}
