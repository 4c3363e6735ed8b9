//! What the allocation manager keeps per queue: its jobs and their phases,
//! the demand it answers, the commands it gives, and how a queue reads in
//! the log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{JobInfo, QueueSpec};

/// Work waiting for a target that no pilot could take: ready tasks, never
/// those still waiting for dependencies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    pub tasks: u32,
    pub cpus: u64,
    pub gpus: u64,
}

impl Demand {
    pub fn add(&mut self, o: &Demand) {
        self.tasks += o.tasks;
        self.cpus += o.cpus;
        self.gpus += o.gpus;
    }
}

/// What the server should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Submit {
        queue: u64,
        number: u32,
        nodes: u32,
        walltime_s: u64,
        idle_timeout_s: u64,
    },
    Status {
        queue: u64,
        jobs: Vec<String>,
    },
    Cancel {
        queue: u64,
        jobs: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    Running,
    Ended,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running => "running",
            Phase::Ended => "ended",
        }
    }
}

/// One submitted pilot job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub number: u32,
    pub nodes: u32,
    pub phase: Phase,
    pub dir: String,
    pub submitted_us: i64,
    pub started_us: Option<i64>,
    pub ended_us: Option<i64>,
    pub reason: Option<String>,
    /// Why the manager chose this queue for the work, when another queue
    /// could have taken it (see [`super::route`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed: Option<String>,
    /// A pilot of this job connected at least once.
    pub ever_connected: bool,
    #[serde(skip)]
    pub(super) pilots: BTreeSet<u64>,
    #[serde(skip)]
    pub(super) status_errors: u32,
    #[serde(skip)]
    pub(super) last_poll_us: i64,
}

/// One allocation queue and its jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queue {
    pub id: u64,
    pub spec: QueueSpec,
    pub created_us: i64,
    pub paused: Option<String>,
    pub submit_failures: u32,
    pub start_failures: u32,
    pub next_submit_us: i64,
    pub next_number: u32,
    #[serde(skip)]
    pub(super) jobs: BTreeMap<String, Job>,
    /// Submissions under way: (number, nodes).
    #[serde(skip)]
    pub(super) submitting: Vec<(u32, u32)>,
    /// Why submissions under way were routed here, by number.
    #[serde(skip)]
    pub(super) routed: BTreeMap<u32, String>,
    #[serde(skip)]
    pub(super) polling: bool,
}

impl Queue {
    pub(super) fn count(&self, phase: Phase) -> u32 {
        self.jobs.values().filter(|j| j.phase == phase).count() as u32
    }
    pub(super) fn nodes_in(&self, phase: Phase) -> u32 {
        self.jobs
            .values()
            .filter(|j| j.phase == phase)
            .map(|j| j.nodes)
            .sum()
    }
    pub(super) fn submitting_nodes(&self) -> u32 {
        self.submitting.iter().map(|s| s.1).sum()
    }
    /// Nodes asked for and not yet started.
    pub(super) fn waiting_nodes(&self) -> u32 {
        self.nodes_in(Phase::Queued) + self.submitting_nodes()
    }
    pub(super) fn active_nodes(&self) -> u32 {
        self.waiting_nodes() + self.nodes_in(Phase::Running)
    }
    pub(super) fn active_jobs(&self) -> u32 {
        self.count(Phase::Queued) + self.count(Phase::Running) + self.submitting.len() as u32
    }
    pub(super) fn in_window(&self, now: i64) -> bool {
        match &self.spec.reservation {
            None => true,
            Some(r) => r.start_us.is_none_or(|s| now >= s) && r.end_us.is_none_or(|e| now < e),
        }
    }
    /// Nodes the waiting tasks would fill.
    pub(super) fn wanted_nodes(&self, demand: &BTreeMap<String, Demand>) -> u32 {
        let mut d = Demand::default();
        for t in self.spec.demand_targets() {
            if let Some(x) = demand.get(&t) {
                d.add(x);
            }
        }
        if d.tasks == 0 {
            return 0;
        }
        let t = &self.spec.target;
        let by_cpu = t
            .cpus_per_node
            .filter(|&c| c > 0)
            .map(|c| d.cpus.div_ceil(c as u64));
        let by_gpu = t
            .gpus_per_node
            .filter(|&g| g > 0)
            .map(|g| d.gpus.div_ceil(g as u64));
        let n = match (by_cpu, by_gpu) {
            (None, None) => d.tasks as u64,
            (c, g) => c.unwrap_or(0).max(g.unwrap_or(0)).max(1),
        };
        n.min(u32::MAX as u64) as u32
    }
}

pub(super) fn job_info(j: &Job) -> JobInfo {
    JobInfo {
        job_id: j.job_id.clone(),
        number: j.number,
        nodes: j.nodes,
        state: j.phase.name().to_string(),
        dir: j.dir.clone(),
        submitted_us: j.submitted_us,
        started_us: j.started_us,
        ended_us: j.ended_us,
        reason: j.reason.clone(),
        pilots: j.pilots.iter().copied().collect(),
    }
}

pub(super) fn no_queue(id: u64) -> String {
    format!("no allocation queue {id}")
}

pub(super) fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One line about a queue for the log.
pub fn describe(s: &QueueSpec) -> String {
    let t = &s.target;
    let mut out = format!(
        "{}/{} ({}), up to {} job{} of {} node{}, walltime {}",
        t.site,
        t.target,
        t.scheduler.name(),
        s.max_jobs,
        plural(s.max_jobs),
        s.nodes_per_job,
        plural(s.nodes_per_job),
        crate::site::fmt_walltime(s.walltime_s)
    );
    if let Some(m) = s.max_nodes {
        out.push_str(&format!(", at most {m} nodes"));
    }
    if let Some(r) = &s.reservation {
        out.push_str(&format!(
            ", reservation {} keeping {} warm{}",
            r.name,
            r.warm,
            match (r.start_us, r.end_us) {
                (None, None) => String::new(),
                (a, b) => format!(
                    " from {} to {}",
                    a.map(crate::util::fmt_ts).unwrap_or_else(|| "now".into()),
                    b.map(crate::util::fmt_ts)
                        .unwrap_or_else(|| "open end".into())
                ),
            }
        ));
    }
    out
}
