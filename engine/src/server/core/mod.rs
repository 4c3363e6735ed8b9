//! The scheduler core: one task owns all live state (runs, attempts, pilots,
//! ready queues) and is the only place where it changes.
//!
//! Messages from the API and from pilot connections arrive on one channel. The
//! core drains whatever is waiting, applies it, places ready attempts on
//! pilots, and hands the store one batch of changes whose effects (replies,
//! messages to pilots, run updates) run only after the batch is committed.
//!
//! By concern: [`runs`] (runs and their steps: submission, dependencies,
//! cancellation, user retries, resuming after a restart), [`pilots`]
//! (connections, losses, heartbeats), [`placement`] (which ready attempt goes
//! to which pilot, in the order of [`ready`]), [`retries`] (results, retry
//! back-off, requeues that cost no try, crash counting), [`catalog`] (the
//! records publish steps write), [`prune`] (removing old runs),
//! [`alloc`] (allocation queues) and [`sites`] (sites run by agents). The
//! rules are unit-tested here by driving the core with messages and a store
//! in a temporary directory: no sockets, no processes (`tests`).

mod alloc;
mod catalog;
mod pilots;
mod placement;
mod prune;
mod ready;
mod retries;
mod runs;
mod sites;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use self::alloc::{AllocConfig, AllocMsg};
use self::pilots::Pilot;
use self::ready::ReadyQueue;
pub use self::runs::task_dir;
use self::runs::Run;
pub use self::sites::AgentMsg;
use crate::api::{AttemptId, AttemptState, PilotId, Registered, RunExplain, RunId, RunUpdate};
use crate::flow::FlowSpec;
use crate::protocol::{FromPilot, PilotInfo, TaskSpec, ToPilot};
use crate::resources::ResourceRequest;
use crate::site::SiteConfig;
use crate::store::{self, Batch, Op, Store};
use crate::util::now_us;

/// A client-facing error: HTTP status and message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum CoreMsg {
    Register {
        spec: FlowSpec,
        source: String,
        path: String,
        reply: Reply<Registered>,
    },
    Submit {
        flow: String,
        version: Option<u32>,
        inputs: Vec<Value>,
        reply: Reply<Vec<u64>>,
    },
    Cancel {
        run: RunId,
        reply: Reply<String>,
    },
    Retry {
        run: RunId,
        reply: Reply<String>,
    },
    PilotHello {
        conn: u64,
        pilot_id: Option<PilotId>,
        info: PilotInfo,
        held: Vec<AttemptId>,
        tx: mpsc::UnboundedSender<Vec<ToPilot>>,
        reply: oneshot::Sender<PilotId>,
    },
    PilotMsgs {
        pilot: PilotId,
        conn: u64,
        msgs: Vec<FromPilot>,
    },
    PilotGone {
        pilot: PilotId,
        conn: u64,
    },
    /// What the live attempts of a run wait for (`beamflow runs explain`).
    Explain {
        run: RunId,
        reply: Reply<RunExplain>,
    },
    Tick,
    Alloc(AllocMsg),
    /// Site agents: connections, answers, `beamflow sites`.
    Agent(AgentMsg),
    /// Deletes these finished runs from the store (`beamflow admin
    /// prune`); through the core, so a run it is retrying stays. Replies
    /// with the runs handed to the store once it has committed.
    Prune {
        runs: Vec<RunId>,
        before_us: i64,
        reply: Reply<usize>,
    },
}

/// Knobs of the core, set from `beamflow server` flags.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// A pilot silent (or disconnected) this long is lost; its attempts go back
    /// to the queue without counting as a try.
    pub pilot_timeout: Duration,
    /// Interval pilots send heartbeats at.
    pub heartbeat: Duration,
    /// Root under which each run gets its directory.
    pub runs_dir: String,
    pub site: SiteConfig,
    pub alloc: AllocConfig,
}

/// A live attempt: ready (queued for a pilot), dispatched or running.
struct Attempt {
    run: RunId,
    step: usize,
    state: AttemptState,
    pilot: Option<PilotId>,
    spec: TaskSpec,
    /// Placed at another site first (see [`runs::Step::avoid_site`]).
    avoid_site: Option<String>,
}

/// Ready attempts are queued per (target, resource request): one look at the
/// head of each queue tells whether anything of that shape can be placed.
type Shape = (String, ResourceRequest);

/// A step's retry, due once its back-off has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RetryDue {
    run: RunId,
    step: usize,
    /// The step's attempt count when the retry was scheduled; a retry
    /// whose step has moved on since (user retry, restart) is ignored.
    after_attempt: u32,
}

/// What goes to one pilot after the next commit.
#[derive(Default)]
struct Outbox {
    tasks: Vec<TaskSpec>,
    acks: Vec<AttemptId>,
    cancels: Vec<AttemptId>,
}

pub struct Core {
    cfg: CoreConfig,
    store: Store,
    me: mpsc::UnboundedSender<CoreMsg>,
    updates: broadcast::Sender<RunUpdate>,
    flows: HashMap<String, Vec<Arc<FlowSpec>>>,
    sources: HashMap<(String, u32), String>,
    runs: HashMap<RunId, Run>,
    attempts: HashMap<AttemptId, Attempt>,
    requests: HashMap<AttemptId, ResourceRequest>,
    ready: HashMap<Shape, ReadyQueue>,
    pilots: HashMap<PilotId, Pilot>,
    /// Retries waiting for their back-off, by when they are due.
    retries: BTreeMap<(Instant, RetryDue), ()>,
    next_run: u64,
    next_attempt: u64,
    next_pilot: u64,
    batch: Batch,
    outbox: HashMap<PilotId, Outbox>,
    updated_runs: HashSet<RunId>,
    alloc: crate::alloc::Manager,
    sites: sites::Sites,
}

impl Core {
    /// Rebuilds the core from the store: every unfinished run resumes where it
    /// was. Attempts that were on pilots wait for those pilots to reconnect.
    pub fn load(
        cfg: CoreConfig,
        store: Store,
        me: mpsc::UnboundedSender<CoreMsg>,
        updates: broadcast::Sender<RunUpdate>,
    ) -> anyhow::Result<Self> {
        let snap = store.read(store::snapshot)?;
        let sources: HashMap<_, _> = store.read(store::flow_sources)?.into_iter().collect();
        let cfg_poll = cfg.alloc.poll_interval.as_secs_f64();
        let cfg_patience = cfg.alloc.patience.as_secs_f64();
        let mut core = Core {
            cfg,
            store,
            me,
            updates,
            flows: HashMap::new(),
            sources,
            runs: HashMap::new(),
            attempts: HashMap::new(),
            requests: HashMap::new(),
            ready: HashMap::new(),
            pilots: HashMap::new(),
            retries: BTreeMap::new(),
            next_run: snap.next_run,
            next_attempt: snap.next_attempt,
            next_pilot: snap.next_pilot,
            batch: Batch::default(),
            outbox: HashMap::new(),
            updated_runs: HashSet::new(),
            alloc: crate::alloc::Manager::new(cfg_poll).with_patience(cfg_patience),
            sites: sites::Sites::default(),
        };
        alloc::restore(&mut core)?;
        sites::restore(&mut core)?;
        for f in snap.flows {
            core.flows
                .entry(f.name.clone())
                .or_default()
                .push(Arc::new(f.spec));
        }
        for v in core.flows.values_mut() {
            v.sort_by_key(|f| f.version);
        }
        core.await_pilots()?;
        let n = snap.runs.len();
        for (row, atts) in snap.runs {
            core.resume(row, atts);
        }
        if n > 0 {
            tracing::info!(
                "resumed {n} unfinished runs; waiting up to {:?} for their pilots",
                core.cfg.pilot_timeout
            );
        }
        core.flush();
        Ok(core)
    }

    /// The core's loop: drain, apply, place, commit; retries whose back-off
    /// has passed count as a message.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CoreMsg>) {
        loop {
            let next_retry = self.retries.keys().next().map(|(at, _)| *at);
            let sleep = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg);
                    let mut n = 0;
                    while let Ok(m) = rx.try_recv() {
                        self.handle(m);
                        n += 1;
                        if n > 4096 {
                            break;
                        }
                    }
                }
                _ = sleep => {}
            }
            self.retries_due(Instant::now());
            self.step();
        }
    }

    /// Places what is ready, lets the allocation manager act, and commits.
    fn step(&mut self) {
        self.schedule();
        self.alloc_plan();
        self.flush();
    }

    fn handle(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Register {
                spec,
                source,
                path,
                reply,
            } => {
                let r = self.register(spec, source, path);
                self.reply(reply, r);
            }
            CoreMsg::Submit {
                flow,
                version,
                inputs,
                reply,
            } => {
                let r = self.submit(&flow, version, inputs);
                let r = r.map(|ids| ids.into_iter().map(|id| id.0).collect());
                self.reply(reply, r);
            }
            CoreMsg::Cancel { run, reply } => {
                let r = self.cancel(run);
                self.reply(reply, r);
            }
            CoreMsg::Retry { run, reply } => {
                let r = self.retry_run(run);
                self.reply(reply, r);
            }
            CoreMsg::PilotHello {
                conn,
                pilot_id,
                info,
                held,
                tx,
                reply,
            } => self.hello(conn, pilot_id, info, held, tx, reply),
            CoreMsg::PilotMsgs { pilot, conn, msgs } => self.pilot_msgs(pilot, conn, msgs),
            CoreMsg::PilotGone { pilot, conn } => self.pilot_gone(pilot, conn),
            CoreMsg::Explain { run, reply } => {
                let r = RunExplain {
                    run: run.0,
                    steps: self.explain(run),
                };
                // Read-only: answered at once, not after a commit.
                let _ = reply.send(Ok(r));
            }
            CoreMsg::Tick => self.tick(),
            CoreMsg::Alloc(m) => self.alloc_msg(m),
            CoreMsg::Agent(m) => self.agent_msg(m),
            CoreMsg::Prune {
                runs,
                before_us,
                reply,
            } => {
                let n = self.prune(runs, before_us);
                self.reply(reply, Ok(n));
            }
        }
    }

    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, ApiError>) {
        self.batch.effects.push(Box::new(move || {
            let _ = reply.send(r);
        }));
    }

    fn publish_update(&mut self, u: RunUpdate) {
        let tx = self.updates.clone();
        self.batch.effects.push(Box::new(move || {
            let _ = tx.send(u);
        }));
    }

    fn event(
        &mut self,
        run: Option<RunId>,
        attempt: Option<AttemptId>,
        pilot: Option<PilotId>,
        kind: &'static str,
        detail: Option<String>,
    ) {
        self.batch.ops.push(Op::Event {
            at: now_us(),
            run,
            attempt,
            pilot,
            kind,
            detail,
        });
    }

    /// Hands the accumulated changes to the store; messages go out after commit.
    fn flush(&mut self) {
        for run_id in std::mem::take(&mut self.updated_runs) {
            if let Some(u) = self.runs.get(&run_id).map(Run::update) {
                self.publish_update(u);
            }
        }
        for (pid, out) in std::mem::take(&mut self.outbox) {
            let Some(tx) = self.pilots.get(&pid).and_then(|p| p.tx.clone()) else {
                continue;
            };
            let ids = |v: Vec<AttemptId>| v.into_iter().map(|a| a.0).collect();
            let mut msgs = Vec::new();
            if !out.acks.is_empty() {
                msgs.push(ToPilot::Ack {
                    attempts: ids(out.acks),
                });
            }
            if !out.cancels.is_empty() {
                msgs.push(ToPilot::Cancel {
                    attempts: ids(out.cancels),
                });
            }
            if !out.tasks.is_empty() {
                msgs.push(ToPilot::Tasks { tasks: out.tasks });
            }
            self.batch.effects.push(Box::new(move || {
                let _ = tx.send(msgs);
            }));
        }
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            self.store.submit(batch);
        }
    }
}
