//! What a site agent and the server say to each other over `/api/agent`:
//! one JSON message per WebSocket text frame. The server decides what to
//! submit, poll and cancel; the agent runs the scheduler's commands at its
//! facility and answers. Submissions carry their queue and number, so a
//! resent one is recognised (see [`crate::batch::ledger`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::script::{JobRequest, PilotCommand};
use crate::batch::JobState;
use crate::site::{EffectiveTarget, SiteConfig};

/// Bumped when a message changes shape; both ends must agree.
pub const AGENT_PROTOCOL: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromAgent {
    /// First message on every connection: the site the agent runs, as its
    /// config file says (targets, limits, transfer roots).
    Hello {
        protocol: u32,
        version: String,
        host: String,
        site: Box<SiteConfig>,
    },
    Submitted {
        queue: u64,
        number: u32,
        /// The job's directory on the agent's machine.
        dir: String,
        result: Result<String, String>,
        /// Submitted before this request (a resend answered from the ledger).
        known: bool,
    },
    Status {
        queue: u64,
        asked: Vec<String>,
        result: Result<BTreeMap<String, JobState>, String>,
    },
    Cancelled {
        queue: u64,
        jobs: Vec<String>,
        error: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToAgent {
    Welcome,
    /// The connection is not accepted; the agent exits with this reason.
    Refused {
        reason: String,
    },
    Submit(Box<Submit>),
    Status {
        queue: u64,
        jobs: Vec<String>,
    },
    Cancel {
        queue: u64,
        jobs: Vec<String>,
    },
}

/// One pilot job to submit: everything but where the pilots find the
/// server, which only the submitting side knows (its executable, token
/// file, certificate and the URL compute nodes can reach).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Submit {
    pub queue: u64,
    pub number: u32,
    pub name: String,
    pub nodes: u32,
    pub walltime_s: u64,
    pub idle_timeout_s: u64,
    pub reservation: Option<String>,
    /// Targets the job's pilots serve.
    pub serves: Vec<String>,
    pub target: EffectiveTarget,
}

/// How pilots of one submitting side reach the server.
#[derive(Clone, Debug)]
pub struct PilotReach {
    /// The `beamflow` executable, unless the site names one.
    pub exe: String,
    /// The URL compute nodes connect to, unless the site names one.
    pub url: String,
    pub token_file: PathBuf,
    pub server_cert: Option<PathBuf>,
}

impl Submit {
    /// The job's directory under `root`: one per queue and number.
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(self.queue.to_string())
            .join(self.number.to_string())
    }

    /// The job to render and submit from `root`.
    pub fn job_request(&self, root: &Path, reach: &PilotReach) -> JobRequest {
        JobRequest {
            name: self.name.clone(),
            nodes: self.nodes,
            walltime_s: self.walltime_s,
            reservation: self.reservation.clone(),
            dir: self.dir(root),
            pilot: PilotCommand::for_target(
                &self.target,
                &reach.exe,
                &reach.url,
                reach.token_file.clone(),
                self.serves.clone(),
                self.idle_timeout_s,
            )
            .pinning(reach.server_cert.clone()),
            target: self.target.clone(),
        }
    }
}

/// Decodes one frame from an agent.
pub fn decode_from_agent(text: &str) -> Result<FromAgent, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Decodes one frame from the server.
pub fn decode_to_agent(text: &str) -> Result<ToAgent, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}
