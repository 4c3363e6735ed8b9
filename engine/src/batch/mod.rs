//! Batch schedulers (Slurm, PBS Pro): what a submitted pilot job is doing,
//! read from the schedulers' own text output. Parsers keep the raw text in
//! every error, because an unexpected line from a facility's scheduler is
//! something an operator has to see verbatim.

pub mod adapter;
pub mod ledger;
pub mod pbs;
pub mod script;
pub mod slurm;

pub use adapter::{BatchError, Scheduler};

use std::fmt;

/// A scheduler's job id, as it prints it (`123`, `123_4`, `349710.server`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a finished job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum End {
    Completed,
    Failed,
    Cancelled,
    /// Killed at its walltime.
    Timeout,
    /// Lost to a node or scheduler failure.
    NodeFail,
}

/// What a job is doing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    /// Waiting to start; `reason` as the scheduler gives it (may be empty).
    Queued {
        reason: String,
    },
    Running,
    Finished {
        end: End,
        exit: Option<i32>,
    },
}

/// A scheduler's output that could not be understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: cannot parse scheduler output: {raw:?}")]
pub struct ParseError {
    pub what: &'static str,
    pub raw: String,
}

impl ParseError {
    fn new(what: &'static str, raw: &str) -> Self {
        ParseError {
            what,
            raw: raw.to_string(),
        }
    }
}
