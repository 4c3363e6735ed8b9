//! The core's side of the allocation manager: demand read from the ready
//! queues, the manager's commands run off the core's thread (a slow `sbatch`
//! never holds up dispatch), and their answers fed back as messages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{ApiError, Core, CoreMsg, Reply};
use crate::agent::wire::PilotReach;
use crate::alloc::queue::{Job, Queue};
use crate::alloc::{Command, Demand, QueueInfo, QueueSpec};
use crate::batch::{ledger, JobState, Scheduler};
use crate::store::Op;
use crate::util::now_us;

/// How the server submits pilots.
#[derive(Clone, Debug)]
pub struct AllocConfig {
    /// Jobs nobody reports on are polled this often.
    pub poll_interval: Duration,
    /// See [`crate::alloc::Manager::with_patience`].
    pub patience: Duration,
    /// One directory per job: script, output, job id.
    pub dir: PathBuf,
    /// The `beamflow` executable pilots run, unless the site names one.
    pub exe: String,
    /// The server URL pilots connect to, unless the site names one.
    pub url: String,
    /// The token file pilots read (0600, on a filesystem compute nodes see).
    pub token_file: PathBuf,
    /// The server's certificate pilots pin (TLS on), on a filesystem
    /// compute nodes see.
    pub server_cert: Option<PathBuf>,
}

/// Allocation requests from the API, and answers from the scheduler.
pub enum AllocMsg {
    Add {
        spec: Box<QueueSpec>,
        reply: Reply<u64>,
    },
    List {
        reply: Reply<Vec<QueueInfo>>,
    },
    Pause {
        id: u64,
        reply: Reply<()>,
    },
    Resume {
        id: u64,
        reply: Reply<()>,
    },
    Remove {
        id: u64,
        cancel: bool,
        reply: Reply<()>,
    },
    Submitted {
        queue: u64,
        number: u32,
        dir: String,
        result: Result<String, String>,
    },
    Status {
        queue: u64,
        asked: Vec<String>,
        result: Result<BTreeMap<String, JobState>, String>,
    },
}

/// Restores the manager's queues and unfinished jobs from the store.
pub(super) fn restore(core: &mut Core) -> anyhow::Result<()> {
    let snap = core.store.read(crate::store::alloc_snapshot)?;
    let queues: Vec<Queue> = snap
        .queues
        .iter()
        .map(|q| serde_json::from_str(q))
        .collect::<Result<_, _>>()?;
    let jobs: Vec<(u64, Job)> = snap
        .jobs
        .iter()
        .map(|(q, j)| serde_json::from_str(j).map(|j| (*q, j)))
        .collect::<Result<_, _>>()?;
    let n = queues.len();
    core.alloc.restore(queues, jobs);
    if n > 0 {
        tracing::info!("restored {n} allocation queues");
    }
    Ok(())
}

impl Core {
    pub(super) fn alloc_msg(&mut self, m: AllocMsg) {
        let now = now_us();
        match m {
            AllocMsg::Add { spec, reply } => {
                let r = check_spec(&spec).map(|()| self.alloc.add(*spec, now));
                self.reply(reply, r);
            }
            AllocMsg::List { reply } => {
                let r = Ok(self.alloc.info(20));
                self.reply(reply, r);
            }
            AllocMsg::Pause { id, reply } => {
                let r = self
                    .alloc
                    .pause(id, "paused by the user", now)
                    .map_err(|e| ApiError::new(404, e));
                self.reply(reply, r);
            }
            AllocMsg::Resume { id, reply } => {
                let r = self
                    .alloc
                    .resume(id, now)
                    .map_err(|e| ApiError::new(404, e));
                self.reply(reply, r);
            }
            AllocMsg::Remove { id, cancel, reply } => {
                let spec = self.alloc.queue(id).map(|q| q.spec.clone());
                let r = match self.alloc.remove(id, cancel, now) {
                    Ok(cmds) => {
                        if let Some(spec) = spec {
                            for c in cmds {
                                self.alloc_run(c, &spec);
                            }
                        }
                        Ok(())
                    }
                    Err(e) if e.starts_with("no allocation queue") => Err(ApiError::new(404, e)),
                    Err(e) => Err(ApiError::new(409, e)),
                };
                self.reply(reply, r);
            }
            AllocMsg::Submitted {
                queue,
                number,
                dir,
                result,
            } => self.alloc.submitted(queue, number, &dir, result, now),
            AllocMsg::Status {
                queue,
                asked,
                result,
            } => self.alloc.statuses(queue, &asked, result, now),
        }
    }

    /// Work waiting per target that no pilot took: ready attempts only, so
    /// steps blocked on dependencies never cause a submission.
    fn demand(&self) -> BTreeMap<String, Demand> {
        let mut d: BTreeMap<String, Demand> = BTreeMap::new();
        for ((target, req), q) in &self.ready {
            let n = q
                .iter()
                .filter(|r| {
                    self.attempts
                        .get(&r.attempt)
                        .is_some_and(|a| a.state == crate::api::AttemptState::Ready)
                })
                .count() as u64;
            if n == 0 {
                continue;
            }
            let v = req.variants.first().copied().unwrap_or_default();
            let e = d.entry(target.clone()).or_default();
            e.tasks += n as u32;
            // A step on several nodes wants its amounts on each of them.
            let nodes = v.nodes.max(1) as u64;
            e.cpus += n * nodes * v.cpus as u64;
            e.gpus += n * nodes * v.gpus as u64;
        }
        d
    }

    /// Lets the manager act on the current demand and persists what changed.
    pub(super) fn alloc_plan(&mut self) {
        if self.alloc.is_empty() {
            self.alloc_persist();
            return;
        }
        let demand = self.demand();
        let cmds = self.alloc.plan(now_us(), &demand);
        for c in cmds {
            let queue = match &c {
                Command::Submit { queue, .. }
                | Command::Status { queue, .. }
                | Command::Cancel { queue, .. } => *queue,
            };
            let Some(q) = self.alloc.queue(queue) else {
                continue;
            };
            let spec = q.spec.clone();
            self.alloc_run(c, &spec);
        }
        self.alloc_persist();
    }

    /// Runs one command: at a site an agent runs, through the agent; at
    /// this server's own, in the background here. Either way its answer
    /// comes back as a message.
    fn alloc_run(&mut self, c: Command, spec: &QueueSpec) {
        if self.sites.by_agent(&spec.target.site) {
            return self.agent_command(c, spec);
        }
        let Some(sched) = Scheduler::for_site(spec.target.scheduler) else {
            if let Command::Submit { queue, number, .. } = c {
                self.alloc.submitted(
                    queue,
                    number,
                    "",
                    Err(format!(
                        "site `{}` has no batch scheduler; start pilots with `beamflow pilot`",
                        spec.target.site
                    )),
                    now_us(),
                );
            }
            return;
        };
        let me = self.me.clone();
        match c {
            Command::Submit {
                queue,
                number,
                nodes,
                walltime_s,
                idle_timeout_s,
            } => {
                let cfg = &self.cfg.alloc;
                let sub =
                    super::sites::submit_of(queue, number, nodes, walltime_s, idle_timeout_s, spec);
                let reach = PilotReach {
                    exe: cfg.exe.clone(),
                    url: cfg.url.clone(),
                    token_file: cfg.token_file.clone(),
                    server_cert: cfg.server_cert.clone(),
                };
                let req = sub.job_request(&cfg.dir, &reach);
                tokio::spawn(async move {
                    let result = ledger::submit_once(sched, &req)
                        .await
                        .map(|s| s.id().to_string());
                    let _ = me.send(CoreMsg::Alloc(AllocMsg::Submitted {
                        queue,
                        number,
                        dir: req.dir.display().to_string(),
                        result,
                    }));
                });
            }
            Command::Status { queue, jobs } => {
                tokio::spawn(async move {
                    let result = sched.states(&jobs).await;
                    let _ = me.send(CoreMsg::Alloc(AllocMsg::Status {
                        queue,
                        asked: jobs,
                        result,
                    }));
                });
            }
            Command::Cancel { queue, jobs } => {
                tokio::spawn(async move {
                    if let Err(e) = sched.cancel_all(&jobs).await {
                        tracing::warn!("allocation queue {queue}: cancelling {jobs:?}: {e}");
                    }
                });
            }
        }
    }

    /// Writes the manager's changes in the core's next commit.
    fn alloc_persist(&mut self) {
        let ch = self.alloc.take_changes();
        for id in ch.queues {
            if let Some(q) = self.alloc.queue(id) {
                self.batch.ops.push(Op::PutAllocQueue {
                    id,
                    state: if q.paused.is_some() {
                        "paused"
                    } else {
                        "active"
                    },
                    data: serde_json::to_string(q).unwrap_or_default(),
                    created: q.created_us,
                });
            }
        }
        for id in ch.removed {
            self.batch.ops.push(Op::DeleteAllocQueue { id });
        }
        for (queue, job) in ch.jobs {
            if let Some(j) = self.alloc.job(queue, &job) {
                self.batch.ops.push(Op::PutAllocJob {
                    queue,
                    job,
                    phase: j.phase.name(),
                    data: serde_json::to_string(j).unwrap_or_default(),
                });
            }
        }
        for e in ch.log {
            self.batch.ops.push(Op::AllocLog {
                queue: e.queue,
                at: e.at_us,
                level: e.level,
                message: e.message,
            });
        }
    }
}

/// A queue the manager can work with: the scheduler and the sizes make sense.
fn check_spec(s: &QueueSpec) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::new(400, m));
    if s.max_jobs == 0 {
        return bad("--max-jobs must be at least 1".into());
    }
    if s.backlog == 0 {
        return bad("--backlog must be at least 1".into());
    }
    if let Some(r) = &s.reservation {
        if let (Some(a), Some(b)) = (r.start_us, r.end_us) {
            if b <= a {
                return bad("--window: the end is not after the start".into());
            }
        }
    }
    s.target
        .check_job(s.nodes_per_job, s.walltime_s)
        .or_else(bad)
}
