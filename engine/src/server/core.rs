//! The scheduler core: one task owns all live state (runs, attempts, pilots,
//! ready queues) and is the only place where it changes.
//!
//! Messages from the API and from pilot connections arrive on one channel. The
//! core drains whatever is waiting, applies it, places ready attempts on
//! pilots, and hands the store one batch of changes whose effects (replies,
//! messages to pilots, run updates) run only after the batch is committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

mod alloc;
mod ready;

use self::ready::{Rank, ReadyQueue};

pub use self::alloc::{AllocConfig, AllocMsg};
use crate::api::{self, RunState};
use crate::flow::{self, ActionKind, FlowSpec};
use crate::protocol::{FromPilot, Outcome, PilotInfo, TaskResult, TaskSpec, ToPilot};
use crate::resources::capacity::{Capacity, Charge};
use crate::resources::{ResourceRequest, Resources};
use crate::site::SiteConfig;
use crate::store::{self, AttemptRow, Batch, NewAttempt, Op, Store};
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

/// A change in a run that clients watching it want to see.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunUpdate {
    pub run: u64,
    pub state: String,
    pub steps_done: usize,
    pub steps_total: usize,
    pub error: Option<String>,
}

/// What registering a flow did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
    pub version: u32,
    pub changed: bool,
}

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
        run: u64,
        reply: Reply<String>,
    },
    Retry {
        run: u64,
        reply: Reply<String>,
    },
    PilotHello {
        conn: u64,
        pilot_id: Option<u64>,
        info: PilotInfo,
        held: Vec<u64>,
        tx: mpsc::UnboundedSender<Vec<ToPilot>>,
        reply: oneshot::Sender<u64>,
    },
    PilotMsgs {
        pilot: u64,
        conn: u64,
        msgs: Vec<FromPilot>,
    },
    PilotGone {
        pilot: u64,
        conn: u64,
    },
    RetryDue {
        run: u64,
        step: usize,
        /// The step's attempt count when the retry was scheduled; a retry
        /// whose step has moved on since (user retry, restart) is ignored.
        after_attempt: u32,
    },
    Tick,
    Alloc(AllocMsg),
    /// Deletes these finished runs from the store (`beamflow admin
    /// prune`); through the core, so a run it is retrying stays. Replies
    /// with the runs handed to the store once it has committed.
    Prune {
        runs: Vec<u64>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepState {
    Pending,
    /// Failed; a retry is due after its backoff.
    Waiting,
    /// One attempt is ready, dispatched or running.
    Active,
    Succeeded,
    Skipped,
    Failed,
    Cancelled,
}

/// A step is given up on once pilots have died this many times while running
/// it. Such losses cost no try — the pilot, not the step, usually failed — but
/// a step that brings its pilot down (an in-process kernel crash, memory
/// exhaustion) would otherwise take every pilot down in turn, for ever.
const MAX_CRASHES: u32 = 3;

struct Step {
    state: StepState,
    /// Attempt numbers handed out so far.
    attempts: u32,
    /// Failures that count against the retry budget.
    failures: u32,
    /// Attempts whose pilot was lost while running them. After the first,
    /// a kernel step runs isolated, in a process of its own.
    crashes: u32,
    outputs: Value,
    current: Option<u64>,
}

impl Step {
    fn pending() -> Self {
        Step {
            state: StepState::Pending,
            attempts: 0,
            failures: 0,
            crashes: 0,
            outputs: Value::Null,
            current: None,
        }
    }
}

struct Run {
    id: u64,
    flow: Arc<FlowSpec>,
    created_us: i64,
    input: Value,
    dir: String,
    running: bool,
    steps: Vec<Step>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttemptState {
    Ready,
    Dispatched,
    Running,
}

struct Attempt {
    run: u64,
    step: usize,
    state: AttemptState,
    pilot: Option<u64>,
    spec: TaskSpec,
}

/// How well a pilot suits an attempt, compared lexicographically (lower is
/// better): on the wrong side of a reservation, nothing free now, load.
type Preference = (u8, u8, usize);

/// Ready attempts are queued per (target, resource request): one look at the
/// head of each queue tells whether anything of that shape can be placed.
type Shape = (String, ResourceRequest);

struct Pilot {
    info: PilotInfo,
    conn: u64,
    tx: Option<mpsc::UnboundedSender<Vec<ToPilot>>>,
    last_seen: Instant,
    disconnected_at: Option<Instant>,
    draining: bool,
    /// What the attempts in capacity leave free.
    cap: Capacity,
    /// Attempts charged against the pilot's resources, with what each holds.
    in_capacity: HashMap<u64, Charge>,
    /// Attempts sent ahead of free resources, in the order the pilot will start them.
    prefetched: VecDeque<u64>,
}

impl Pilot {
    /// A pilot holding nothing yet; `tx` is `None` while it is disconnected.
    fn new(info: PilotInfo, conn: u64, tx: Option<mpsc::UnboundedSender<Vec<ToPilot>>>) -> Self {
        Pilot {
            disconnected_at: tx.is_none().then(Instant::now),
            cap: Capacity::new(info.resources),
            info,
            conn,
            tx,
            last_seen: Instant::now(),
            draining: false,
            in_capacity: HashMap::new(),
            prefetched: VecDeque::new(),
        }
    }

    /// Every attempt placed on this pilot, in or beyond capacity.
    fn held(&self) -> Vec<u64> {
        self.in_capacity
            .keys()
            .chain(self.prefetched.iter())
            .copied()
            .collect()
    }
    fn load(&self) -> usize {
        self.in_capacity.len() + self.prefetched.len()
    }
    fn fitting_variant(&self, req: &ResourceRequest) -> Option<Charge> {
        self.cap.place(req)
    }
    fn could_ever_run(&self, req: &ResourceRequest) -> bool {
        self.cap.could_ever_run(req)
    }
    fn charge(&mut self, attempt: u64, c: Charge) {
        self.cap.take(&c);
        self.in_capacity.insert(attempt, c);
    }
    fn accepts(&self, target: &str, timeout_s: Option<f64>, now: i64) -> bool {
        if self.tx.is_none() || self.draining || !self.info.targets.iter().any(|t| t == target) {
            return false;
        }
        match self.info.walltime_end_us {
            Some(end) => now + ((timeout_s.unwrap_or(0.0) * 1e6) as i64) < end,
            None => true,
        }
    }
    /// Releases what `attempt` held and moves prefetched attempts that now fit
    /// into capacity, mirroring the order in which the pilot starts them.
    fn release(&mut self, attempt: u64, requests: &HashMap<u64, ResourceRequest>) {
        if let Some(c) = self.in_capacity.remove(&attempt) {
            self.cap.give(&c);
        } else if let Some(pos) = self.prefetched.iter().position(|&a| a == attempt) {
            self.prefetched.remove(pos);
        }
        while let Some(&next) = self.prefetched.front() {
            let Some(v) = requests
                .get(&next)
                .and_then(|req| self.fitting_variant(req))
            else {
                break;
            };
            self.prefetched.pop_front();
            self.charge(next, v);
        }
    }
}

#[derive(Default)]
struct Outbox {
    tasks: Vec<TaskSpec>,
    acks: Vec<u64>,
    cancels: Vec<u64>,
}

pub struct Core {
    cfg: CoreConfig,
    store: Store,
    me: mpsc::UnboundedSender<CoreMsg>,
    updates: broadcast::Sender<RunUpdate>,
    flows: HashMap<String, Vec<Arc<FlowSpec>>>,
    sources: HashMap<(String, u32), String>,
    runs: HashMap<u64, Run>,
    attempts: HashMap<u64, Attempt>,
    requests: HashMap<u64, ResourceRequest>,
    ready: HashMap<Shape, ReadyQueue>,
    pilots: HashMap<u64, Pilot>,
    next_run: u64,
    next_attempt: u64,
    next_pilot: u64,
    batch: Batch,
    outbox: HashMap<u64, Outbox>,
    updated_runs: HashSet<u64>,
    alloc: crate::alloc::Manager,
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
            next_run: snap.next_run,
            next_attempt: snap.next_attempt,
            next_pilot: snap.next_pilot,
            batch: Batch::default(),
            outbox: HashMap::new(),
            updated_runs: HashSet::new(),
            alloc: crate::alloc::Manager::new(cfg_poll),
        };
        alloc::restore(&mut core)?;
        for f in snap.flows {
            core.flows
                .entry(f.name.clone())
                .or_default()
                .push(Arc::new(f.spec));
        }
        for v in core.flows.values_mut() {
            v.sort_by_key(|f| f.version);
        }
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

    fn flow_spec(&self, name: &str, version: Option<u32>) -> Option<Arc<FlowSpec>> {
        let versions = self.flows.get(name)?;
        match version {
            Some(v) => versions.iter().find(|f| f.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }

    fn resume(&mut self, row: store::RunRow, atts: Vec<AttemptRow>) {
        let Some(flow) = self.flow_spec(&row.flow, Some(row.flow_version)) else {
            tracing::error!(
                "run {}: flow {} v{} is missing from the store; failing the run",
                row.id,
                row.flow,
                row.flow_version
            );
            self.batch.ops.push(Op::RunState {
                id: row.id,
                state: "failed",
                error: Some("flow definition missing from the store".into()),
                at: now_us(),
            });
            return;
        };
        let mut run = Run {
            id: row.id,
            flow: flow.clone(),
            created_us: row.created_us,
            input: row.input,
            dir: row.dir,
            running: row.state == "running",
            steps: flow.steps.iter().map(|_| Step::pending()).collect(),
        };
        let mut live: Vec<AttemptRow> = Vec::new();
        for a in atts {
            let Some(step) = run.steps.get_mut(a.step_index) else {
                continue;
            };
            step.attempts = step.attempts.max(a.number);
            if a.counts_retry && a.state == "failed" {
                step.failures += 1;
            }
            if a.state == "lost" && a.started_us.is_some() {
                step.crashes += 1;
            }
            step.current = None;
            step.state = match a.state.as_str() {
                "succeeded" => {
                    step.outputs = a.outputs.clone().unwrap_or(Value::Null);
                    StepState::Succeeded
                }
                "skipped" => StepState::Skipped,
                "failed" if !a.counts_retry => StepState::Failed,
                "failed" => StepState::Waiting,
                "ready" | "dispatched" | "running" => {
                    step.current = Some(a.id);
                    live.push(a);
                    StepState::Active
                }
                // lost, returned or cancelled attempts were always followed by a
                // newer one in the same commit; if not, start the step afresh.
                _ => StepState::Pending,
            };
        }
        let id = run.id;
        for (i, s) in run.steps.iter_mut().enumerate() {
            if s.state == StepState::Waiting {
                if s.failures > flow.steps[i].retry.count {
                    s.state = StepState::Failed;
                } else {
                    let _ = self.me.send(CoreMsg::RetryDue {
                        run: id,
                        step: i,
                        after_attempt: s.attempts,
                    });
                }
            }
        }
        self.runs.insert(id, run);
        for a in live {
            let spec = self.task_spec(
                id,
                a.step_index,
                a.id,
                a.number,
                a.params.clone().unwrap_or(Value::Null),
            );
            let shape = (
                spec_target(&flow, a.step_index),
                flow.steps[a.step_index].resources.clone(),
            );
            let state = match a.state.as_str() {
                "ready" => AttemptState::Ready,
                "dispatched" => AttemptState::Dispatched,
                _ => AttemptState::Running,
            };
            self.requests.insert(a.id, shape.1.clone());
            self.attempts.insert(
                a.id,
                Attempt {
                    run: id,
                    step: a.step_index,
                    state,
                    pilot: a.pilot_id,
                    spec,
                },
            );
            match (state, a.pilot_id) {
                (AttemptState::Ready, _) | (_, None) => {
                    if let Some(att) = self.attempts.get_mut(&a.id) {
                        att.state = AttemptState::Ready;
                        att.pilot = None;
                    }
                    let rank = Rank::new(&flow, a.step_index, row.created_us, a.id);
                    self.ready.entry(shape).or_default().push(rank)
                }
                (_, Some(p)) => {
                    // Placeholder until the pilot reconnects or its grace runs out.
                    let pilot = self.pilots.entry(p).or_insert_with(|| {
                        let info = PilotInfo {
                            name: format!("pilot-{p}"),
                            host: String::new(),
                            resources: Resources::NONE,
                            gpu_ids: vec![],
                            targets: vec![],
                            walltime_end_us: None,
                            batch_job: None,
                            reservation: None,
                            prefetch: 0,
                            version: String::new(),
                        };
                        Pilot::new(info, 0, None)
                    });
                    pilot.charge(a.id, Charge::NONE);
                }
            }
        }
        self.advance(id);
    }

    /// The core's loop: drain, apply, place, commit.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CoreMsg>) {
        while let Some(msg) = rx.recv().await {
            self.handle(msg);
            let mut n = 0;
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
                n += 1;
                if n > 4096 {
                    break;
                }
            }
            self.schedule();
            self.alloc_plan();
            self.flush();
        }
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
            CoreMsg::PilotMsgs { pilot, conn, msgs } => {
                let Some(p) = self.pilots.get_mut(&pilot) else {
                    return;
                };
                if p.conn != conn {
                    return;
                }
                p.last_seen = Instant::now();
                for m in msgs {
                    self.pilot_msg(pilot, m);
                }
            }
            CoreMsg::PilotGone { pilot, conn } => {
                if let Some(p) = self.pilots.get_mut(&pilot) {
                    if p.conn == conn && p.tx.is_some() {
                        tracing::info!(
                            "pilot {pilot} disconnected; waiting {:?} for it to come back",
                            self.cfg.pilot_timeout
                        );
                        p.tx = None;
                        p.disconnected_at = Some(Instant::now());
                        self.batch.ops.push(Op::PilotState {
                            id: pilot,
                            state: "disconnected",
                            reason: None,
                            at: now_us(),
                        });
                    }
                }
            }
            CoreMsg::RetryDue {
                run,
                step,
                after_attempt,
            } => self.retry_due(run, step, after_attempt),
            CoreMsg::Tick => self.tick(),
            CoreMsg::Alloc(m) => self.alloc_msg(m),
            CoreMsg::Prune {
                mut runs,
                before_us,
                reply,
            } => {
                runs.retain(|id| !self.runs.contains_key(id));
                let n = runs.len();
                self.batch.ops.push(Op::PruneRuns { runs, before_us });
                self.reply(reply, Ok(n));
            }
        }
    }

    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, ApiError>) {
        self.batch.effects.push(Box::new(move || {
            let _ = reply.send(r);
        }));
    }

    fn register(
        &mut self,
        spec: FlowSpec,
        source: String,
        path: String,
    ) -> Result<Registered, ApiError> {
        let key = (spec.name.clone(), spec.version);
        if let Some(old) = self.sources.get(&key) {
            if old == &source {
                return Ok(Registered {
                    name: spec.name,
                    version: spec.version,
                    changed: false,
                });
            }
            return Err(ApiError::new(
                409,
                format!(
                    "{path}: flow `{}` version {} is already registered with different content; raise `version` to register a change",
                    spec.name, spec.version
                ),
            ));
        }
        let spec_json = serde_json::to_string(&spec).expect("flow spec serialises");
        self.batch.ops.push(Op::PutFlow {
            name: spec.name.clone(),
            version: spec.version,
            source: source.clone(),
            path,
            spec: spec_json,
            at: now_us(),
        });
        self.sources.insert(key, source);
        let out = Registered {
            name: spec.name.clone(),
            version: spec.version,
            changed: true,
        };
        let list = self.flows.entry(spec.name.clone()).or_default();
        list.push(Arc::new(spec));
        list.sort_by_key(|f| f.version);
        Ok(out)
    }

    fn submit(
        &mut self,
        name: &str,
        version: Option<u32>,
        inputs: Vec<Value>,
    ) -> Result<Vec<u64>, ApiError> {
        let flow = self.flow_spec(name, version).ok_or_else(|| match version {
            Some(v) => ApiError::new(404, format!("flow `{name}` version {v} is not registered")),
            None => ApiError::new(
                404,
                format!("flow `{name}` is not registered (beamflow flow register FILE)"),
            ),
        })?;
        // Check every input before creating any run: a batch is all or nothing.
        let inputs = inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| {
                flow::coerce_inputs(&flow, inp).map_err(|e| {
                    let which = if inputs.len() > 1 {
                        format!("input #{i}: ")
                    } else {
                        String::new()
                    };
                    ApiError::new(400, format!("{which}{e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_us();
        let mut ids = Vec::with_capacity(inputs.len());
        for input in inputs {
            let id = self.next_run;
            self.next_run += 1;
            let dir = format!(
                "{}/{}/{}",
                self.cfg.runs_dir.trim_end_matches('/'),
                flow.name,
                id
            );
            self.batch.ops.push(Op::InsertRun {
                id,
                flow: flow.name.clone(),
                version: flow.version,
                input: input.to_string(),
                dir: dir.clone(),
                state: "queued",
                at: now,
            });
            let steps = flow.steps.iter().map(|_| Step::pending()).collect();
            self.runs.insert(
                id,
                Run {
                    id,
                    flow: flow.clone(),
                    created_us: now,
                    input,
                    dir,
                    running: false,
                    steps,
                },
            );
            self.advance(id);
            ids.push(id);
        }
        Ok(ids)
    }

    /// The variables a step's templates see.
    fn template_ctx(&self, run: &Run, attempt: u64, number: u32, task_dir: &str) -> Value {
        let mut steps = Map::new();
        for (spec, st) in run.flow.steps.iter().zip(&run.steps) {
            if matches!(st.state, StepState::Succeeded | StepState::Skipped) {
                steps.insert(spec.name.clone(), json!({ "outputs": st.outputs }));
            }
        }
        json!({
            "input": run.input,
            "run": { "id": run.id, "dir": run.dir, "flow": run.flow.name },
            "task": { "id": attempt, "dir": task_dir, "attempt": number },
            "site": self.cfg.site.template_vars(),
            "steps": steps,
        })
    }

    fn task_spec(
        &self,
        run_id: u64,
        step: usize,
        attempt: u64,
        number: u32,
        params: Value,
    ) -> TaskSpec {
        let run = &self.runs[&run_id];
        let s = &run.flow.steps[step];
        TaskSpec {
            attempt,
            run: run_id,
            flow: run.flow.name.clone(),
            step: s.name.clone(),
            action: s.action,
            kernel: s.kernel.clone(),
            params,
            run_dir: run.dir.clone(),
            task_dir: task_dir(&run.dir, &s.name, number),
            timeout_s: s.timeout_s,
            resources: s.resources.clone(),
            isolate: s.isolate || (s.action == ActionKind::Kernel && run.steps[step].crashes > 0),
        }
    }

    /// Starts every step whose dependencies are done; settles the run when
    /// nothing is left to do.
    fn advance(&mut self, run_id: u64) {
        loop {
            let Some(run) = self.runs.get(&run_id) else {
                return;
            };
            let mut next = None;
            for (i, s) in run.flow.steps.iter().enumerate() {
                if run.steps[i].state != StepState::Pending {
                    continue;
                }
                let deps_done = s.after.iter().all(|d| {
                    run.flow.step_index(d).is_some_and(|j| {
                        matches!(
                            run.steps[j].state,
                            StepState::Succeeded | StepState::Skipped
                        )
                    })
                });
                if deps_done {
                    next = Some(i);
                    break;
                }
            }
            match next {
                Some(i) => self.start_step(run_id, i),
                None => break,
            }
        }
        self.settle(run_id);
    }

    fn start_step(&mut self, run_id: u64, i: usize) {
        let now = now_us();
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let run = &self.runs[&run_id];
        let spec = &run.flow.steps[i];
        let number = run.steps[i].attempts + 1;
        let tdir = task_dir(&run.dir, &spec.name, number);
        let ctx = self.template_ctx(run, attempt, number, &tdir);
        let when = match &spec.when {
            Some(w) => flow::template::eval_bool(w, &ctx).map_err(|e| format!("when: {e}")),
            None => Ok(true),
        };
        let rendered = when.and_then(|go| {
            if go {
                flow::template::render(&spec.params, &ctx).map(Some)
            } else {
                Ok(None)
            }
        });
        let action = spec.action.name();
        let step_name = spec.name.clone();
        let shape: Shape = (spec.on.clone(), spec.resources.clone());
        let (state, params, error, step_state) = match &rendered {
            Ok(Some(p)) => ("ready", Some(p.to_string()), None, StepState::Active),
            Ok(None) => ("skipped", None, None, StepState::Skipped),
            Err(e) => (
                "failed",
                None,
                Some(format!("step `{step_name}`: {e}")),
                StepState::Failed,
            ),
        };
        self.batch.ops.push(Op::InsertAttempt(Box::new(NewAttempt {
            id: attempt,
            run: run_id,
            step: step_name,
            step_index: i,
            number,
            action,
            state,
            params,
            ready_us: now,
            error: error.clone(),
            finished_us: (state != "ready").then_some(now),
        })));
        let run = self.runs.get_mut(&run_id).expect("run exists");
        let rank = Rank::new(&run.flow, i, run.created_us, attempt);
        let st = &mut run.steps[i];
        st.attempts = number;
        st.state = step_state;
        st.current = None;
        match rendered {
            Ok(Some(p)) => {
                st.current = Some(attempt);
                let spec = self.task_spec(run_id, i, attempt, number, p);
                self.requests.insert(attempt, shape.1.clone());
                self.attempts.insert(
                    attempt,
                    Attempt {
                        run: run_id,
                        step: i,
                        state: AttemptState::Ready,
                        pilot: None,
                        spec,
                    },
                );
                self.ready.entry(shape).or_default().push(rank);
            }
            Ok(None) => {
                st.outputs = json!({});
                self.event(Some(run_id), Some(attempt), None, "step_skipped", None);
            }
            Err(_) => self.event(Some(run_id), Some(attempt), None, "step_failed", error),
        }
        self.updated_runs.insert(run_id);
    }

    /// Finishes the run if every step is done, or fails it if a step failed.
    fn settle(&mut self, run_id: u64) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let failed = run.steps.iter().position(|s| s.state == StepState::Failed);
        let all_done = run
            .steps
            .iter()
            .all(|s| matches!(s.state, StepState::Succeeded | StepState::Skipped));
        if let Some(i) = failed {
            let name = run.flow.steps[i].name.clone();
            let err = format!("step `{name}` failed");
            self.finish_run(run_id, "failed", Some(err));
        } else if all_done {
            self.finish_run(run_id, "succeeded", None);
        }
    }

    fn finish_run(&mut self, run_id: u64, state: &'static str, error: Option<String>) {
        let Some(mut run) = self.runs.remove(&run_id) else {
            return;
        };
        // Stop whatever else of this run is still queued or running.
        let live: Vec<u64> = run.steps.iter().filter_map(|s| s.current).collect();
        for a in live {
            self.stop_attempt(a);
        }
        for s in &mut run.steps {
            if matches!(
                s.state,
                StepState::Pending | StepState::Waiting | StepState::Active
            ) {
                s.state = StepState::Cancelled;
            }
        }
        let now = now_us();
        self.batch.ops.push(Op::RunState {
            id: run_id,
            state,
            error: error.clone(),
            at: now,
        });
        self.event(
            Some(run_id),
            None,
            None,
            match state {
                "succeeded" => "run_succeeded",
                "failed" => "run_failed",
                _ => "run_cancelled",
            },
            error.clone(),
        );
        self.updated_runs.remove(&run_id);
        let done = run
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Succeeded | StepState::Skipped))
            .count();
        self.publish_update(RunUpdate {
            run: run_id,
            state: state.to_string(),
            steps_done: done,
            steps_total: run.steps.len(),
            error,
        });
    }

    /// Withdraws an attempt: unqueued if ready, cancelled on its pilot otherwise.
    fn stop_attempt(&mut self, attempt: u64) {
        let Some(a) = self.attempts.get(&attempt) else {
            return;
        };
        match (a.state, a.pilot) {
            (AttemptState::Ready, _) | (_, None) => {
                self.attempts.remove(&attempt);
                self.requests.remove(&attempt);
                self.batch.ops.push(Op::AttemptState {
                    id: attempt,
                    state: "cancelled",
                    error: None,
                    at: now_us(),
                });
            }
            (_, Some(p)) => {
                // The attempt stays known until the pilot reports it ended.
                self.outbox.entry(p).or_default().cancels.push(attempt);
            }
        }
    }

    fn publish_update(&mut self, u: RunUpdate) {
        let tx = self.updates.clone();
        self.batch.effects.push(Box::new(move || {
            let _ = tx.send(u);
        }));
    }

    fn event(
        &mut self,
        run: Option<u64>,
        attempt: Option<u64>,
        pilot: Option<u64>,
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

    fn cancel(&mut self, run_id: u64) -> Result<String, ApiError> {
        if !self.runs.contains_key(&run_id) {
            return Err(self.not_active(run_id));
        }
        self.finish_run(run_id, "cancelled", Some("cancelled by user".into()));
        Ok(format!("run {run_id} cancelled"))
    }

    fn not_active(&self, run_id: u64) -> ApiError {
        match self.store.read(|c| store::run(c, run_id)) {
            Ok(Some(d)) => ApiError::new(409, format!("run {run_id} is already {}", d.run.state)),
            _ => ApiError::new(404, format!("no run {run_id}")),
        }
    }

    /// Re-runs the failed and cancelled steps of a finished run with a fresh
    /// retry budget; succeeded steps keep their outputs.
    fn retry_run(&mut self, run_id: u64) -> Result<String, ApiError> {
        if self.runs.contains_key(&run_id) {
            return Err(ApiError::new(409, format!("run {run_id} is still active")));
        }
        let detail = self
            .store
            .read(|c| store::run(c, run_id))
            .map_err(|e| ApiError::new(500, e.to_string()))?
            .ok_or_else(|| ApiError::new(404, format!("no run {run_id}")))?;
        if !matches!(detail.run.state.as_str(), "failed" | "cancelled") {
            return Err(ApiError::new(
                409,
                format!(
                    "run {run_id} is {}; only failed or cancelled runs are retried",
                    detail.run.state
                ),
            ));
        }
        if self.attempts.values().any(|a| a.run == run_id) {
            return Err(ApiError::new(
                409,
                format!("run {run_id} is still stopping; try again in a moment"),
            ));
        }
        if detail
            .attempts
            .iter()
            .any(|a| matches!(a.state.as_str(), "dispatched" | "running"))
        {
            return Err(ApiError::new(
                409,
                format!("run {run_id} is still stopping; try again in a moment"),
            ));
        }
        let mut row = detail.run;
        row.state = RunState::Queued;
        // Only succeeded and skipped attempts carry over.
        let keep: Vec<AttemptRow> = detail
            .attempts
            .into_iter()
            .map(|mut a| {
                if !matches!(a.state.as_str(), "succeeded" | "skipped") {
                    a.state = api::AttemptState::Superseded;
                    a.counts_retry = false;
                }
                a
            })
            .collect();
        for a in keep.iter().filter(|a| a.state == "superseded") {
            self.batch.ops.push(Op::Supersede { id: a.id });
        }
        self.batch.ops.push(Op::RunState {
            id: run_id,
            state: "queued",
            error: None,
            at: now_us(),
        });
        self.event(Some(run_id), None, None, "run_retried", None);
        self.resume(row, keep);
        Ok(format!("run {run_id} queued again"))
    }

    fn retry_due(&mut self, run_id: u64, step: usize, after_attempt: u32) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if run.steps.get(step).map(|s| (s.state, s.attempts))
            != Some((StepState::Waiting, after_attempt))
        {
            return;
        }
        run.steps[step].state = StepState::Pending;
        self.start_step(run_id, step);
        self.settle(run_id);
    }

    fn hello(
        &mut self,
        conn: u64,
        pilot_id: Option<u64>,
        info: PilotInfo,
        held: Vec<u64>,
        tx: mpsc::UnboundedSender<Vec<ToPilot>>,
        reply: oneshot::Sender<u64>,
    ) {
        let now = now_us();
        let known = pilot_id.filter(|id| self.pilots.contains_key(id));
        let id = match known {
            Some(id) => id,
            None => {
                let id = self.next_pilot;
                self.next_pilot += 1;
                id
            }
        };
        let held_order = held;
        let running: HashSet<u64> = held_order.iter().copied().collect();
        let mut resend_cancels: Vec<u64> = Vec::new();
        let mut stray = Vec::new();
        let mut forgotten = Vec::new();
        let info_json = serde_json::to_string(&info).unwrap_or_default();
        let name = info.name.clone();
        let host = info.host.clone();
        match self.pilots.get_mut(&id).filter(|_| known.is_some()) {
            Some(p) => {
                tracing::info!(
                    "pilot {id} ({name}) reconnected with {} attempts",
                    running.len()
                );
                p.cap = Capacity::new(info.resources);
                p.info = info;
                p.conn = conn;
                p.tx = Some(tx.clone());
                p.disconnected_at = None;
                p.last_seen = Instant::now();
                // Re-charge resources in the order the pilot runs them
                // (`held` lists running, then queued, then finished attempts).
                let ours: HashSet<u64> = p.held().into_iter().collect();
                p.in_capacity.clear();
                p.prefetched.clear();
                for &a in held_order.iter().filter(|a| ours.contains(a)) {
                    let req = self.requests.get(&a).cloned().unwrap_or_default();
                    let fit = if p.prefetched.is_empty() {
                        p.fitting_variant(&req)
                    } else {
                        None
                    };
                    match fit {
                        Some(v) => p.charge(a, v),
                        None => p.prefetched.push_back(a),
                    }
                }
                forgotten.extend(ours.iter().filter(|a| !running.contains(a)));
                // Cancels sent while the pilot was away were dropped: send
                // them again for attempts whose run has ended.
                let ended = held_order.iter().filter(|a| {
                    self.attempts
                        .get(a)
                        .is_some_and(|x| x.pilot == Some(id) && !self.runs.contains_key(&x.run))
                });
                resend_cancels.extend(ended);
            }
            None => {
                if let Some(old) = pilot_id {
                    tracing::info!("pilot {old} ({name}) is unknown or was declared lost; registered as pilot {id}");
                }
                self.pilots
                    .insert(id, Pilot::new(info, conn, Some(tx.clone())));
            }
        }
        // Attempts the pilot runs that are no longer its own: stop them.
        for a in &running {
            if self.attempts.get(a).and_then(|x| x.pilot) != Some(id) {
                stray.push(*a);
            }
        }
        for a in forgotten {
            // Dispatched but never received: place it again; not a try.
            self.requeue(a, "returned", "the pilot never received it");
        }
        stray.extend(resend_cancels);
        if !stray.is_empty() {
            self.outbox.entry(id).or_default().cancels.extend(stray);
        }
        self.batch.ops.push(Op::PutPilot {
            id,
            name,
            host,
            info: info_json,
            state: "connected",
            at: now,
        });
        self.event(None, None, Some(id), "pilot_connected", None);
        if let Some(job) = self.pilots.get(&id).and_then(|p| p.info.batch_job.clone()) {
            self.alloc.pilot_connected(id, &job, now);
        }
        let welcome = ToPilot::Welcome {
            pilot_id: id,
            server_uid: String::new(),
            heartbeat_s: self.cfg.heartbeat.as_secs_f64(),
            transfer: self.cfg.site.transfer.clone(),
        };
        self.batch.effects.push(Box::new(move || {
            let _ = tx.send(vec![welcome]);
            let _ = reply.send(id);
        }));
    }

    fn pilot_msg(&mut self, pilot: u64, m: FromPilot) {
        match m {
            FromPilot::Started { attempt, at_us } => {
                let Some(a) = self.attempts.get_mut(&attempt) else {
                    return;
                };
                if a.pilot != Some(pilot) {
                    return;
                }
                a.state = AttemptState::Running;
                let run = a.run;
                self.batch.ops.push(Op::Started {
                    id: attempt,
                    at: at_us,
                });
                self.mark_running(run);
            }
            FromPilot::Finished(r) => self.finished(pilot, r),
            FromPilot::Returned { attempts } => {
                for a in attempts {
                    if self.attempts.get(&a).and_then(|x| x.pilot) == Some(pilot) {
                        self.requeue(a, "returned", "returned by a draining pilot");
                    }
                }
            }
            FromPilot::Draining { reason } => {
                let Some(p) = self.pilots.get_mut(&pilot) else {
                    return;
                };
                p.draining = true;
                self.batch.ops.push(Op::PilotState {
                    id: pilot,
                    state: "draining",
                    reason: Some(reason),
                    at: now_us(),
                });
            }
            FromPilot::Heartbeat => {}
            FromPilot::Bye { reason } => {
                tracing::info!("pilot {pilot} left: {reason}");
                self.lose_pilot(pilot, "left", &reason);
            }
            FromPilot::Hello { .. } => {}
        }
    }

    fn mark_running(&mut self, run_id: u64) {
        if let Some(run) = self.runs.get_mut(&run_id) {
            if !run.running {
                run.running = true;
                self.batch.ops.push(Op::RunState {
                    id: run_id,
                    state: "running",
                    error: None,
                    at: now_us(),
                });
                self.updated_runs.insert(run_id);
            }
        }
    }

    fn finished(&mut self, pilot: u64, r: TaskResult) {
        let id = r.attempt;
        self.outbox.entry(pilot).or_default().acks.push(id);
        let owned = self
            .attempts
            .get(&id)
            .is_some_and(|a| a.pilot == Some(pilot));
        if !owned {
            // A duplicate (resent after a reconnect) or an attempt that was
            // already given up on: acknowledge, record nothing.
            return;
        }
        let a = self.attempts.remove(&id).expect("owned attempt exists");
        if let Some(p) = self.pilots.get_mut(&pilot) {
            p.release(id, &self.requests);
        }
        self.requests.remove(&id);
        let run_active = self.runs.contains_key(&a.run);
        if r.outcome == Outcome::Cancelled && run_active {
            // The pilot stopped it for its own reasons (shutdown): not a try.
            self.requeue_removed(a, id, "cancelled", "stopped by the pilot");
            return;
        }
        let (state, counts) = match r.outcome {
            Outcome::Succeeded => ("succeeded", false),
            Outcome::Failed => ("failed", true),
            Outcome::Cancelled => ("cancelled", false),
        };
        self.batch.ops.push(Op::Finished {
            id,
            state,
            outputs: Some(r.outputs.to_string()),
            error: r.error.clone(),
            exit_code: r.exit_code,
            started: r.started_us,
            finished: r.finished_us,
            counts_retry: counts,
        });
        if !run_active {
            return;
        }
        let run_id = a.run;
        let run = self.runs.get_mut(&run_id).expect("active run");
        let spec = run.flow.steps[a.step].clone();
        let st = &mut run.steps[a.step];
        if st.current != Some(id) {
            // A superseded attempt (the run was retried meanwhile): recorded above, nothing more.
            return;
        }
        st.current = None;
        let after_attempt = st.attempts;
        self.updated_runs.insert(run_id);
        match r.outcome {
            Outcome::Succeeded => {
                st.state = StepState::Succeeded;
                st.outputs = r.outputs.clone();
                if spec.action == ActionKind::Publish {
                    self.catalog(run_id, id, &r.outputs);
                }
                self.advance(run_id);
            }
            _ => {
                st.failures += 1;
                let failures = st.failures;
                let err = r.error.clone().unwrap_or_else(|| "failed".into());
                if failures <= spec.retry.count {
                    st.state = StepState::Waiting;
                    let delay = spec.retry.delay_s(failures);
                    self.event(
                        Some(run_id),
                        Some(id),
                        Some(pilot),
                        "retry_scheduled",
                        Some(format!(
                            "try {} of {} in {:.1}s after: {err}",
                            failures + 1,
                            spec.retry.count + 1,
                            delay
                        )),
                    );
                    let me = self.me.clone();
                    let step = a.step;
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
                        let _ = me.send(CoreMsg::RetryDue {
                            run: run_id,
                            step,
                            after_attempt,
                        });
                    });
                } else {
                    st.state = StepState::Failed;
                    let tries = failures;
                    let msg = format!(
                        "step `{}` failed after {tries} {}: {err}",
                        spec.name,
                        if tries == 1 { "try" } else { "tries" }
                    );
                    self.event(
                        Some(run_id),
                        Some(id),
                        Some(pilot),
                        "step_failed",
                        Some(msg.clone()),
                    );
                    self.finish_run(run_id, "failed", Some(msg));
                }
            }
        }
    }

    /// A publish step's record goes into the catalog in the same commit as its result.
    fn catalog(&mut self, run_id: u64, attempt: u64, outputs: &Value) {
        let Some(Value::Object(rec)) = outputs.get("record") else {
            return;
        };
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let mut rec = rec.clone();
        rec.insert("input".into(), run.input.clone());
        rec.insert("flow_version".into(), json!(run.flow.version));
        let record = Value::Object(rec);
        let mut body = String::new();
        collect_text(&record, &mut body);
        let flow = run.flow.name.clone();
        self.batch.ops.push(Op::Catalog {
            run: run_id,
            attempt,
            flow,
            record: record.to_string(),
            body,
            at: now_us(),
        });
    }

    /// Puts a step back in the queue as a new attempt after an infrastructure
    /// failure; the step's retry budget is untouched.
    fn requeue(&mut self, attempt: u64, state: &'static str, why: &str) {
        let Some(a) = self.attempts.remove(&attempt) else {
            return;
        };
        if let Some(p) = a.pilot.and_then(|p| self.pilots.get_mut(&p)) {
            p.release(attempt, &self.requests);
        }
        self.requests.remove(&attempt);
        self.requeue_removed(a, attempt, state, why);
    }

    fn requeue_removed(&mut self, a: Attempt, attempt: u64, state: &'static str, why: &str) {
        self.batch.ops.push(Op::AttemptState {
            id: attempt,
            state,
            error: Some(why.to_string()),
            at: now_us(),
        });
        self.event(
            Some(a.run),
            Some(attempt),
            a.pilot,
            "attempt_requeued",
            Some(why.to_string()),
        );
        let Some(run) = self.runs.get_mut(&a.run) else {
            return;
        };
        let st = &mut run.steps[a.step];
        if st.current == Some(attempt) {
            st.state = StepState::Pending;
            st.current = None;
            self.start_step(a.run, a.step);
            self.settle(a.run);
        }
    }

    /// The pilot is gone for good: everything it held goes back to the queue.
    fn lose_pilot(&mut self, pilot: u64, state: &'static str, why: &str) {
        let Some(p) = self.pilots.remove(&pilot) else {
            return;
        };
        self.alloc.pilot_gone(pilot, why, now_us());
        let held = p.held();
        self.batch.ops.push(Op::PilotState {
            id: pilot,
            state,
            reason: Some(why.to_string()),
            at: now_us(),
        });
        self.event(
            None,
            None,
            Some(pilot),
            if state == "lost" {
                "pilot_lost"
            } else {
                "pilot_left"
            },
            Some(why.to_string()),
        );
        let mut sorted = held;
        sorted.sort_unstable();
        for a in sorted {
            let Some(att) = self.attempts.remove(&a) else {
                continue;
            };
            // Running, or started on the pilot before word of it arrived:
            // a step that kills its pilot at once never says it started.
            let was_running = att.state == AttemptState::Running || p.in_capacity.contains_key(&a);
            self.requests.remove(&a);
            let reason = format!(
                "pilot {pilot} {}: {why}",
                if state == "lost" { "lost" } else { "left" }
            );
            if self.runs.contains_key(&att.run) {
                if was_running && self.crashed(&att) >= MAX_CRASHES {
                    self.give_up_crashed(att, a, &reason);
                } else {
                    self.requeue_removed(att, a, "lost", &reason);
                }
            } else {
                self.batch.ops.push(Op::AttemptState {
                    id: a,
                    state: "cancelled",
                    error: Some(reason),
                    at: now_us(),
                });
            }
        }
    }

    /// Counts a pilot's death while it ran this attempt against the step;
    /// returns the step's count.
    fn crashed(&mut self, a: &Attempt) -> u32 {
        let Some(st) = self
            .runs
            .get_mut(&a.run)
            .and_then(|r| r.steps.get_mut(a.step))
        else {
            return 0;
        };
        st.crashes += 1;
        st.crashes
    }

    /// The step's pilots died while running it [`MAX_CRASHES`] times: the
    /// step fails, and with it the run.
    fn give_up_crashed(&mut self, a: Attempt, attempt: u64, why: &str) {
        self.batch.ops.push(Op::AttemptState {
            id: attempt,
            state: "lost",
            error: Some(why.to_string()),
            at: now_us(),
        });
        let Some(run) = self.runs.get_mut(&a.run) else {
            return;
        };
        let name = run.flow.steps[a.step].name.clone();
        let st = &mut run.steps[a.step];
        if st.current != Some(attempt) {
            return;
        }
        st.current = None;
        st.state = StepState::Failed;
        let msg = format!(
            "step `{name}` failed: {MAX_CRASHES} pilots died while running it (last: {why}); not trying it again"
        );
        self.event(
            Some(a.run),
            Some(attempt),
            a.pilot,
            "step_failed",
            Some(msg.clone()),
        );
        self.updated_runs.insert(a.run);
        self.finish_run(a.run, "failed", Some(msg));
    }

    fn tick(&mut self) {
        let timeout = self.cfg.pilot_timeout;
        let now = Instant::now();
        let mut lost = Vec::new();
        for (id, p) in &self.pilots {
            match p.disconnected_at {
                Some(t) if now.duration_since(t) >= timeout => {
                    lost.push((*id, "did not reconnect"))
                }
                None if now.duration_since(p.last_seen) >= timeout => {
                    lost.push((*id, "heartbeat timed out"))
                }
                _ => {}
            }
        }
        for (id, why) in lost {
            tracing::warn!("pilot {id} lost: {why} within {timeout:?}");
            if let Some(tx) = self.pilots.get(&id).and_then(|p| p.tx.clone()) {
                let msg = ToPilot::Refused {
                    reason: format!("declared lost: {why}"),
                };
                // After the requeue is committed, like every other message.
                self.batch.effects.push(Box::new(move || {
                    let _ = tx.send(vec![msg]);
                }));
            }
            self.lose_pilot(id, "lost", why);
        }
    }

    /// Places ready attempts on pilots, best-ranked first (see [`ready`]):
    /// first where resources are free, then ahead of time on pilots with room
    /// in their prefetch queue. Pilots in a reservation are kept for
    /// `realtime` steps, which go there first; other steps use them only
    /// when they are idle.
    fn schedule(&mut self) {
        if self.ready.is_empty() || self.pilots.is_empty() {
            return;
        }
        let now = now_us();
        let mut shapes: Vec<Shape> = self.ready.keys().cloned().collect();
        shapes.sort_by_key(|s| self.ready[s].front());
        for shape in shapes {
            while let Some(rank) = self.ready.get(&shape).and_then(|q| q.front()) {
                let aid = rank.attempt;
                let Some(a) = self.attempts.get(&aid) else {
                    self.ready.get_mut(&shape).map(|q| q.pop_front());
                    continue;
                };
                if a.state != AttemptState::Ready {
                    self.ready.get_mut(&shape).map(|q| q.pop_front());
                    continue;
                }
                let timeout = a.spec.timeout_s;
                let (target, req) = (&shape.0, &shape.1);
                let realtime = target == "realtime";
                // (pilot, variant that fits now, preference: lower is better)
                let mut best: Option<(u64, Option<Charge>, Preference)> = None;
                for (pid, p) in &self.pilots {
                    if !p.accepts(target, timeout, now) || !p.could_ever_run(req) {
                        continue;
                    }
                    // The pilot starts tasks in order: behind a prefetched
                    // task, nothing starts in today's free resources.
                    let fit = if p.prefetched.is_empty() {
                        p.fitting_variant(req)
                    } else {
                        None
                    };
                    let reserved = p.info.reservation.is_some();
                    if reserved && !realtime && (p.load() > 0 || fit.is_none()) {
                        continue;
                    }
                    if fit.is_none() && p.prefetched.len() >= p.info.prefetch as usize {
                        continue;
                    }
                    // Realtime prefers reservation pilots, other work the rest;
                    // then a pilot with free resources, then the least loaded.
                    let pref = (
                        u8::from(reserved != realtime),
                        u8::from(fit.is_none()),
                        p.load(),
                    );
                    if best.as_ref().is_none_or(|b| pref < b.2) {
                        best = Some((*pid, fit, pref));
                    }
                }
                let Some((pid, fit, _)) = best else { break };
                self.ready.get_mut(&shape).map(|q| q.pop_front());
                let p = self.pilots.get_mut(&pid).expect("chosen pilot");
                match fit {
                    Some(v) => p.charge(aid, v),
                    None => p.prefetched.push_back(aid),
                }
                let a = self.attempts.get_mut(&aid).expect("ready attempt");
                a.state = AttemptState::Dispatched;
                a.pilot = Some(pid);
                let run = a.run;
                self.batch.ops.push(Op::Dispatched {
                    id: aid,
                    pilot: pid,
                    at: now,
                });
                self.outbox
                    .entry(pid)
                    .or_default()
                    .tasks
                    .push(a.spec.clone());
                self.mark_running(run);
            }
        }
        self.ready.retain(|_, q| !q.is_empty());
    }

    /// Hands the accumulated changes to the store; messages go out after commit.
    fn flush(&mut self) {
        for run_id in std::mem::take(&mut self.updated_runs) {
            if let Some(run) = self.runs.get(&run_id) {
                let done = run
                    .steps
                    .iter()
                    .filter(|s| matches!(s.state, StepState::Succeeded | StepState::Skipped))
                    .count();
                let u = RunUpdate {
                    run: run_id,
                    state: if run.running { "running" } else { "queued" }.to_string(),
                    steps_done: done,
                    steps_total: run.steps.len(),
                    error: None,
                };
                self.publish_update(u);
            }
        }
        for (pid, out) in std::mem::take(&mut self.outbox) {
            let Some(tx) = self.pilots.get(&pid).and_then(|p| p.tx.clone()) else {
                continue;
            };
            let mut msgs = Vec::new();
            if !out.acks.is_empty() {
                msgs.push(ToPilot::Ack { attempts: out.acks });
            }
            if !out.cancels.is_empty() {
                msgs.push(ToPilot::Cancel {
                    attempts: out.cancels,
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

fn spec_target(flow: &FlowSpec, step: usize) -> String {
    flow.steps[step].on.clone()
}

/// Directory of one attempt: retries never write over each other.
pub fn task_dir(run_dir: &str, step: &str, number: u32) -> String {
    format!("{run_dir}/steps/{step}/attempt-{number}")
}

/// All strings and numbers of a record, for full-text search.
fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        Value::Bool(b) => out.push_str(if *b { "true " } else { "false " }),
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push_str(k);
            out.push(' ');
            collect_text(x, out)
        }),
        Value::Null => {}
    }
}
