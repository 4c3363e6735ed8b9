//! The messages between clients and the server: every request and response
//! body of the HTTP API, one type each, used by the server's handlers and
//! by the client alike. A field renamed on one side is a compile error on
//! the other, and a field missing from an answer is a deserialisation error
//! that names it — never an empty table or a NaN.
//!
//! States travel as lower-case words (`"succeeded"`); ids as numbers.

mod ids;
mod rows;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::ids::{AttemptId, PilotId, RunId};
pub use self::rows::*;
pub use crate::alloc::{JobInfo, LogEntry, QueueInfo, QueueSpec};

/// An enum of states written as lower-case words, in the store and on the
/// wire alike: `as_str`, `FromStr` (naming the states it knows), `Display`,
/// and comparison with a word.
macro_rules! states {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vm])* $v,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    other => Err(format!(
                        "`{other}` is not a {} (one of: {})",
                        $what,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

states! {
    /// Where a run is: queued until a step is dispatched, running until it
    /// ends one of three ways.
    RunState ("run state") {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunState {
    /// Succeeded, failed or cancelled: nothing more happens to the run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

states! {
    /// Where one attempt of a step is.
    AttemptState ("attempt state") {
        /// Its dependencies are met; waiting for a pilot.
        Ready = "ready",
        /// Sent to a pilot.
        Dispatched = "dispatched",
        /// The pilot started it.
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        /// Its `when` was false.
        Skipped = "skipped",
        /// Its pilot was lost while holding it; a new attempt follows.
        Lost = "lost",
        /// Handed back by a draining pilot, or never received; a new
        /// attempt follows.
        Returned = "returned",
        /// Its pilot's job was preempted (a preemptable queue): a new
        /// attempt follows, placed at another site first, costing the step
        /// nothing.
        Preempted = "preempted",
        /// The run was retried: this attempt no longer counts.
        Superseded = "superseded",
    }
}

impl AttemptState {
    /// On a pilot: dispatched or running.
    pub fn is_in_flight(self) -> bool {
        matches!(self, AttemptState::Dispatched | AttemptState::Running)
    }
}

states! {
    /// Where a pilot is, as the server last saw it.
    PilotState ("pilot state") {
        Connected = "connected",
        /// The connection dropped; the pilot has until the pilot timeout to
        /// come back with its tasks.
        Disconnected = "disconnected",
        /// Takes no new work (its walltime is ending).
        Draining = "draining",
        /// Declared gone: its tasks went back to the queue.
        Lost = "lost",
        /// Said goodbye.
        Left = "left",
    }
}

/// What a token may do: viewer, submitter and admin each include the
/// roles before them; a pilot's opens the pilot endpoint only, an agent's
/// the agent endpoint only (and the admin's opens both).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Submitter,
    Admin,
    Pilot,
    /// A site agent: opens the agent endpoint only.
    Agent,
}

impl Role {
    /// Whether a token of this role opens a request that needs `need`.
    pub fn opens(self, need: Role) -> bool {
        match (self, need) {
            (Role::Admin, _) | (Role::Pilot, Role::Pilot) | (Role::Agent, Role::Agent) => true,
            (Role::Pilot | Role::Agent, _) | (_, Role::Pilot | Role::Agent) => false,
            (have, need) => have >= need,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
            Role::Pilot => "pilot",
            Role::Agent => "agent",
        })
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /health` (no token needed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    /// The store's schema version.
    pub schema: usize,
}

/// `POST /api/flows`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterFlow {
    /// The flow file's text.
    pub source: String,
    /// Where it came from, for messages (default `<api>`).
    #[serde(default)]
    pub path: Option<String>,
}

/// What registering a flow did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
    pub version: u32,
    /// False when this version was registered before with the same text.
    pub changed: bool,
}

/// `GET /api/flows/{name}?version=N`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VersionQuery {
    pub version: Option<u32>,
}

/// `POST /api/runs`: one run (`input`) or many of the same flow
/// (`inputs`, all accepted or none).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRuns {
    pub flow: String,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<Value>>,
}

/// The runs a submission created, in the order of its inputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submitted {
    pub runs: Vec<u64>,
}

/// An answer that is one sentence (`runs cancel`, `alloc pause`, …).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

impl Message {
    pub fn new(message: impl Into<String>) -> Self {
        Message {
            message: message.into(),
        }
    }
}

/// `GET /api/events?runs=1,2`: a `run` event carries this whenever a
/// watched run changes; a `lagged` event says the client fell behind and
/// should read the runs again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunUpdate {
    pub run: u64,
    pub state: RunState,
    pub steps_done: usize,
    pub steps_total: usize,
    pub error: Option<String>,
}

/// `GET /api/events` query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Comma-separated run ids; all runs when absent.
    pub runs: Option<String>,
}

/// `GET /api/report?flow=NAME&limit=N`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub flow: String,
    pub limit: Option<usize>,
}

/// The newest runs of a flow with all their attempts (`beamflow report`,
/// a trigger's recovery and follow-ups).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub runs: Vec<RunRow>,
    pub attempts: Vec<AttemptRow>,
}

/// `GET /api/runs/{id}/explain`: why each live step of a run is where it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunExplain {
    pub run: u64,
    /// The run's live attempts: ready (waiting for a pilot), dispatched or
    /// running. Empty when the run has finished.
    pub steps: Vec<StepExplain>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepExplain {
    pub step: String,
    pub attempt: u64,
    pub state: AttemptState,
    pub target: String,
    pub resources: crate::resources::ResourceRequest,
    pub timeout_s: Option<f64>,
    /// The pilot it was sent to.
    pub pilot: Option<u64>,
    /// For a ready attempt: why no pilot has taken it, in one sentence.
    pub waiting: Option<String>,
    /// For a ready attempt: what each pilot says to it.
    pub pilots: Vec<PilotVerdict>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PilotVerdict {
    pub pilot: u64,
    pub name: String,
    /// True when the pilot takes the attempt at the next placement.
    pub takes: bool,
    pub why: String,
}

/// `POST /api/ui/code`: a one-time sign-in code for the web page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UiCode {
    pub code: String,
    /// Seconds the code stays good.
    pub expires_s: u64,
}

/// `POST /api/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
}

/// A token made by `POST /api/tokens`: shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// A named token as `tokens.json` keeps it and `beamflow token list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// Keyed BLAKE3 of the token, hex (never sent to clients).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub hash: String,
    pub created_us: i64,
}

/// `DELETE /api/tokens/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: String,
}

/// `POST /api/tokens/rotate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotate {
    /// Seconds the old home token stays good.
    pub grace_s: f64,
}

/// What rotating did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotated {
    pub rotated: bool,
    pub grace_s: f64,
}

/// `POST /api/admin/prune`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneRequest {
    /// Runs that finished longer ago than this go.
    pub older_than_s: f64,
    /// Write the runs to an archive file before deleting them.
    #[serde(default = "yes")]
    pub archive: bool,
    /// Count what would go, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn yes() -> bool {
    true
}

/// What a prune took (or, dry, would take).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Runs that finished before this (µs since the epoch) were taken.
    pub before_us: i64,
    pub runs: u64,
    pub attempts: u64,
    pub events: u64,
    /// JSON Lines, one run (with its attempts and events) per line.
    pub archive: Option<PathBuf>,
    pub seconds: f64,
}

/// `POST /api/alloc`: the new queue's id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueAdded {
    pub id: u64,
}

/// `GET /api/sites`: one site the server submits to, by itself or
/// through an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    pub scheduler: String,
    pub description: String,
    /// `server` (this server runs the site's scheduler) or `agent`.
    pub run_by: String,
    pub agent: Option<AgentInfo>,
    pub targets: Vec<String>,
    /// Allocation queues submitting to the site.
    pub queues: Vec<u64>,
    pub jobs_queued: u32,
    pub jobs_running: u32,
    /// Pilots connected from the site's jobs.
    pub pilots: u32,
    /// The site's config as the server knows it (an agent sends its own):
    /// `alloc add --site NAME` resolves targets from it where the client
    /// has no copy of the file.
    pub config: crate::site::SiteConfig,
}

/// The agent of a site.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentInfo {
    pub host: String,
    pub version: String,
    pub connected: bool,
    /// Connected since (µs), or when it was last seen.
    pub since_us: i64,
}

/// `DELETE /api/alloc/{id}?cancel=true`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoveQueue {
    #[serde(default)]
    pub cancel: bool,
}

/// `GET /api/alloc/log?queue=N&limit=N`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogQuery {
    pub queue: Option<u64>,
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_words_on_the_wire_and_in_the_store() {
        for s in RunState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), *s);
        }
        for s in AttemptState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<AttemptState>().unwrap(), *s);
        }
        for s in PilotState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<PilotState>().unwrap(), *s);
        }
        let e = "done".parse::<RunState>().unwrap_err();
        assert_eq!(
            e,
            "`done` is not a run state (one of: queued, running, succeeded, failed, cancelled)"
        );
        assert!(RunState::Failed == "failed");
    }

    #[test]
    fn a_missing_field_is_an_error_that_names_it() {
        let e = serde_json::from_str::<Registered>(r#"{"name": "x", "changed": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `version`"), "{e}");
    }
}
