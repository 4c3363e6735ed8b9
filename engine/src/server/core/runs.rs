//! Runs and their steps: registering flows, submitting runs, starting each
//! step when its dependencies are done, settling a run when nothing is left,
//! cancelling, a user's retry of a finished run, and resuming runs after a
//! restart.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::ready::Rank;
use super::{ApiError, Attempt, Core, RetryDue, Shape};
use crate::api::{
    AttemptId, AttemptRow, AttemptState, PilotId, Registered, RunId, RunRow, RunState, RunUpdate,
};
use crate::flow::{self, ActionKind, FlowSpec, StepSpec};
use crate::protocol::{PilotInfo, Stage, TaskSpec};
use crate::resources::capacity::Charge;
use crate::resources::Resources;
use crate::store::{self, NewAttempt, Op};
use crate::util::now_us;

/// Where one step of a live run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepState {
    Pending,
    /// Failed; a retry is due after its back-off.
    Waiting,
    /// One attempt is ready, dispatched or running.
    Active,
    Succeeded,
    Skipped,
    Failed,
    Cancelled,
}

impl StepState {
    /// Succeeded or skipped: the steps after it may start.
    pub(super) fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

pub(super) struct Step {
    pub state: StepState,
    /// Attempt numbers handed out so far.
    pub attempts: u32,
    /// Failures that count against the retry budget.
    pub failures: u32,
    /// Attempts whose pilot was lost while running them. After the first,
    /// a kernel step runs isolated, in a process of its own.
    pub crashes: u32,
    pub outputs: Value,
    pub current: Option<AttemptId>,
    /// The site where a pilot holding this step was preempted: its next
    /// attempt is placed elsewhere first.
    pub avoid_site: Option<String>,
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
            avoid_site: None,
        }
    }
}

/// A run the core is working on; finished runs live in the store only.
pub(super) struct Run {
    pub id: RunId,
    pub flow: Arc<FlowSpec>,
    pub created_us: i64,
    pub input: Value,
    pub dir: String,
    /// Queued until a step is dispatched.
    pub running: bool,
    pub steps: Vec<Step>,
}

impl Run {
    fn new(id: RunId, flow: Arc<FlowSpec>, created_us: i64, input: Value, dir: String) -> Self {
        Run {
            steps: flow.steps.iter().map(|_| Step::pending()).collect(),
            id,
            flow,
            created_us,
            input,
            dir,
            running: false,
        }
    }

    pub fn steps_done(&self) -> usize {
        self.steps.iter().filter(|s| s.state.is_done()).count()
    }

    /// What a client watching this live run is told.
    pub fn update(&self) -> RunUpdate {
        RunUpdate {
            run: self.id.0,
            state: if self.running {
                RunState::Running
            } else {
                RunState::Queued
            },
            steps_done: self.steps_done(),
            steps_total: self.steps.len(),
            error: None,
        }
    }
}

/// Directory of one attempt: retries never write over each other.
pub fn task_dir(run_dir: &str, step: &str, number: u32) -> String {
    format!("{run_dir}/steps/{step}/attempt-{number}")
}

impl Core {
    pub(super) fn flow_spec(&self, name: &str, version: Option<u32>) -> Option<Arc<FlowSpec>> {
        let versions = self.flows.get(name)?;
        match version {
            Some(v) => versions.iter().find(|f| f.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }

    pub(super) fn register(
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

    pub(super) fn submit(
        &mut self,
        name: &str,
        version: Option<u32>,
        inputs: Vec<Value>,
    ) -> Result<Vec<RunId>, ApiError> {
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
            let id = RunId(self.next_run);
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
                state: RunState::Queued,
                at: now,
            });
            self.runs
                .insert(id, Run::new(id, flow.clone(), now, input, dir));
            self.advance(id);
            ids.push(id);
        }
        Ok(ids)
    }

    /// The variables a step's templates see.
    fn template_ctx(&self, run: &Run, attempt: AttemptId, number: u32, task_dir: &str) -> Value {
        let mut steps = Map::new();
        for (spec, st) in run.flow.steps.iter().zip(&run.steps) {
            if st.state.is_done() {
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
        run_id: RunId,
        step: usize,
        attempt: AttemptId,
        number: u32,
        params: Value,
        stage: Vec<Stage>,
    ) -> TaskSpec {
        let run = &self.runs[&run_id];
        let s = &run.flow.steps[step];
        TaskSpec {
            stage,
            attempt: attempt.0,
            run: run_id.0,
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
    pub(super) fn advance(&mut self, run_id: RunId) {
        loop {
            let Some(run) = self.runs.get(&run_id) else {
                return;
            };
            let next = run.flow.steps.iter().enumerate().position(|(i, s)| {
                run.steps[i].state == StepState::Pending
                    && s.after.iter().all(|d| {
                        run.flow
                            .step_index(d)
                            .is_some_and(|j| run.steps[j].state.is_done())
                    })
            });
            match next {
                Some(i) => self.start_step(run_id, i),
                None => break,
            }
        }
        self.settle(run_id);
    }

    /// A new attempt of step `i`: ready for a pilot, or skipped (its `when`
    /// is false), or failed (its templates do not render).
    pub(super) fn start_step(&mut self, run_id: RunId, i: usize) {
        let now = now_us();
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        let run = &self.runs[&run_id];
        let spec = &run.flow.steps[i];
        let number = run.steps[i].attempts + 1;
        let tdir = task_dir(&run.dir, &spec.name, number);
        let mut ctx = self.template_ctx(run, attempt, number, &tdir);
        let staged = staging(spec, &ctx, &tdir);
        if let Ok(stages) = &staged {
            let paths: Map<String, Value> = stages
                .iter()
                .map(|st| (st.name.clone(), json!(st.path())))
                .collect();
            ctx["staged"] = Value::Object(paths);
        }
        let when = match (&spec.when, &staged) {
            (_, Err(e)) => Err(e.clone()),
            (Some(w), Ok(_)) => {
                flow::template::eval_bool(w, &ctx).map_err(|e| format!("when: {e}"))
            }
            (None, Ok(_)) => Ok(true),
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
            Ok(Some(p)) => (
                AttemptState::Ready,
                Some(p.to_string()),
                None,
                StepState::Active,
            ),
            Ok(None) => (AttemptState::Skipped, None, None, StepState::Skipped),
            Err(e) => (
                AttemptState::Failed,
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
            finished_us: (state != AttemptState::Ready).then_some(now),
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
                let avoid_site = st.avoid_site.clone();
                let stage = staged.unwrap_or_default();
                let spec = self.task_spec(run_id, i, attempt, number, p, stage);
                self.requests.insert(attempt, shape.1.clone());
                self.attempts.insert(
                    attempt,
                    Attempt {
                        run: run_id,
                        step: i,
                        state: AttemptState::Ready,
                        pilot: None,
                        spec,
                        avoid_site,
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
    pub(super) fn settle(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let failed = run.steps.iter().position(|s| s.state == StepState::Failed);
        let all_done = run.steps.iter().all(|s| s.state.is_done());
        if let Some(i) = failed {
            let name = run.flow.steps[i].name.clone();
            let err = format!("step `{name}` failed");
            self.finish_run(run_id, RunState::Failed, Some(err));
        } else if all_done {
            self.finish_run(run_id, RunState::Succeeded, None);
        }
    }

    pub(super) fn finish_run(&mut self, run_id: RunId, state: RunState, error: Option<String>) {
        let Some(mut run) = self.runs.remove(&run_id) else {
            return;
        };
        // Stop whatever else of this run is still queued or running.
        let live: Vec<AttemptId> = run.steps.iter().filter_map(|s| s.current).collect();
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
        let kind = match state {
            RunState::Succeeded => "run_succeeded",
            RunState::Failed => "run_failed",
            _ => "run_cancelled",
        };
        self.event(Some(run_id), None, None, kind, error.clone());
        self.updated_runs.remove(&run_id);
        self.publish_update(RunUpdate {
            run: run_id.0,
            state,
            steps_done: run.steps_done(),
            steps_total: run.steps.len(),
            error,
        });
    }

    /// Withdraws an attempt: unqueued if ready, cancelled on its pilot otherwise.
    fn stop_attempt(&mut self, attempt: AttemptId) {
        let Some(a) = self.attempts.get(&attempt) else {
            return;
        };
        match (a.state, a.pilot) {
            (AttemptState::Ready, _) | (_, None) => {
                self.attempts.remove(&attempt);
                self.requests.remove(&attempt);
                self.batch.ops.push(Op::AttemptState {
                    id: attempt,
                    state: AttemptState::Cancelled,
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

    pub(super) fn mark_running(&mut self, run_id: RunId) {
        if let Some(run) = self.runs.get_mut(&run_id) {
            if !run.running {
                run.running = true;
                self.batch.ops.push(Op::RunState {
                    id: run_id,
                    state: RunState::Running,
                    error: None,
                    at: now_us(),
                });
                self.updated_runs.insert(run_id);
            }
        }
    }

    pub(super) fn cancel(&mut self, run_id: RunId) -> Result<String, ApiError> {
        if !self.runs.contains_key(&run_id) {
            return Err(self.not_active(run_id));
        }
        self.finish_run(
            run_id,
            RunState::Cancelled,
            Some("cancelled by user".into()),
        );
        Ok(format!("run {run_id} cancelled"))
    }

    fn not_active(&self, run_id: RunId) -> ApiError {
        match self.store.read(|c| store::run(c, run_id.0)) {
            Ok(Some(d)) => {
                let done = match d.run.state {
                    RunState::Cancelled => "is already cancelled".to_string(),
                    s => format!("has already {s}"),
                };
                ApiError::new(409, format!("run {run_id} {done}"))
            }
            _ => ApiError::new(404, format!("no run {run_id}")),
        }
    }

    /// Re-runs the failed and cancelled steps of a finished run with a fresh
    /// retry budget; succeeded steps keep their outputs.
    pub(super) fn retry_run(&mut self, run_id: RunId) -> Result<String, ApiError> {
        if self.runs.contains_key(&run_id) {
            return Err(ApiError::new(409, format!("run {run_id} is still active")));
        }
        let detail = self
            .store
            .read(|c| store::run(c, run_id.0))
            .map_err(|e| ApiError::new(500, e.to_string()))?
            .ok_or_else(|| ApiError::new(404, format!("no run {run_id}")))?;
        if !matches!(detail.run.state, RunState::Failed | RunState::Cancelled) {
            return Err(ApiError::new(
                409,
                format!(
                    "run {run_id} is {}; only failed or cancelled runs are retried",
                    detail.run.state
                ),
            ));
        }
        let stopping = self.attempts.values().any(|a| a.run == run_id)
            || detail.attempts.iter().any(|a| a.state.is_in_flight());
        if stopping {
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
                if !matches!(a.state, AttemptState::Succeeded | AttemptState::Skipped) {
                    a.state = AttemptState::Superseded;
                    a.counts_retry = false;
                }
                a
            })
            .collect();
        for a in keep.iter().filter(|a| a.state == AttemptState::Superseded) {
            self.batch.ops.push(Op::Supersede {
                id: AttemptId(a.id),
            });
        }
        self.batch.ops.push(Op::RunState {
            id: run_id,
            state: RunState::Queued,
            error: None,
            at: now_us(),
        });
        self.event(Some(run_id), None, None, "run_retried", None);
        self.resume(row, keep);
        Ok(format!("run {run_id} queued again"))
    }

    /// Takes up a run from its rows: after a restart, or a user's retry.
    /// Steps resume where their attempts left them; attempts that were on a
    /// pilot wait for it to reconnect.
    pub(super) fn resume(&mut self, row: RunRow, atts: Vec<AttemptRow>) {
        let id = RunId(row.id);
        let Some(flow) = self.flow_spec(&row.flow, Some(row.flow_version)) else {
            tracing::error!(
                "run {id}: flow {} v{} is missing from the store; failing the run",
                row.flow,
                row.flow_version
            );
            self.batch.ops.push(Op::RunState {
                id,
                state: RunState::Failed,
                error: Some("flow definition missing from the store".into()),
                at: now_us(),
            });
            return;
        };
        let mut run = Run::new(id, flow.clone(), row.created_us, row.input, row.dir);
        run.running = row.state == RunState::Running;
        let mut live: Vec<AttemptRow> = Vec::new();
        for a in atts {
            let Some(step) = run.steps.get_mut(a.step_index) else {
                continue;
            };
            step.attempts = step.attempts.max(a.number);
            if a.counts_retry && a.state == AttemptState::Failed {
                step.failures += 1;
            }
            if a.state == AttemptState::Lost && a.started_us.is_some() {
                step.crashes += 1;
            }
            step.current = None;
            step.state = match a.state {
                AttemptState::Succeeded => {
                    step.outputs = a.outputs.clone().unwrap_or(Value::Null);
                    StepState::Succeeded
                }
                AttemptState::Skipped => StepState::Skipped,
                AttemptState::Failed if !a.counts_retry => StepState::Failed,
                AttemptState::Failed => StepState::Waiting,
                AttemptState::Ready | AttemptState::Dispatched | AttemptState::Running => {
                    step.current = Some(AttemptId(a.id));
                    live.push(a);
                    StepState::Active
                }
                // lost, returned or cancelled attempts were always followed by a
                // newer one in the same commit; if not, start the step afresh.
                _ => StepState::Pending,
            };
        }
        let now = std::time::Instant::now();
        for (i, s) in run.steps.iter_mut().enumerate() {
            if s.state == StepState::Waiting {
                if s.failures > flow.steps[i].retry.count {
                    s.state = StepState::Failed;
                } else {
                    let due = RetryDue {
                        run: id,
                        step: i,
                        after_attempt: s.attempts,
                    };
                    self.retries.insert((now, due), ());
                }
            }
        }
        self.runs.insert(id, run);
        for a in live {
            self.resume_attempt(id, &flow, row.created_us, a);
        }
        self.advance(id);
    }

    /// A live attempt of a resumed run: queued again if it was ready or on no
    /// pilot, else charged to its pilot (a placeholder until it reconnects
    /// or its grace runs out).
    fn resume_attempt(&mut self, run: RunId, flow: &FlowSpec, created_us: i64, a: AttemptRow) {
        let aid = AttemptId(a.id);
        // Rendered again from the same context as when the step started
        // (inputs and finished steps' outputs only), so a resumed attempt
        // stages the same files.
        let step = &flow.steps[a.step_index];
        let stage = if step.stage.is_empty() {
            Vec::new()
        } else {
            let r = &self.runs[&run];
            let tdir = task_dir(&r.dir, &step.name, a.number);
            let ctx = self.template_ctx(r, aid, a.number, &tdir);
            staging(step, &ctx, &tdir).unwrap_or_default()
        };
        let spec = self.task_spec(
            run,
            a.step_index,
            aid,
            a.number,
            a.params.clone().unwrap_or(Value::Null),
            stage,
        );
        let shape: Shape = (
            flow.steps[a.step_index].on.clone(),
            flow.steps[a.step_index].resources.clone(),
        );
        self.requests.insert(aid, shape.1.clone());
        let pilot = a
            .pilot_id
            .map(PilotId)
            .filter(|_| a.state != AttemptState::Ready);
        self.attempts.insert(
            aid,
            Attempt {
                run,
                step: a.step_index,
                state: if pilot.is_some() {
                    a.state
                } else {
                    AttemptState::Ready
                },
                pilot,
                spec,
                avoid_site: None,
            },
        );
        match pilot {
            None => {
                let rank = Rank::new(flow, a.step_index, created_us, aid);
                self.ready.entry(shape).or_default().push(rank)
            }
            Some(p) => {
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
                        site: None,
                        preemptable: false,
                        prefetch: 0,
                        version: String::new(),
                    };
                    super::Pilot::new(info, 0, None, "")
                });
                pilot.charge(aid, Charge::NONE);
            }
        }
    }
}

/// The inputs step `spec` stages, rendered in `ctx`: each copied into
/// `TASK_DIR/staged/NAME/`.
fn staging(spec: &StepSpec, ctx: &Value, task_dir: &str) -> Result<Vec<Stage>, String> {
    spec.stage
        .iter()
        .map(|(name, src)| {
            let src = match flow::template::render(&json!(src), ctx) {
                Ok(Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(e) => return Err(format!("stage.{name}: {e}")),
            };
            Ok(Stage {
                name: name.clone(),
                into: format!("{task_dir}/staged/{name}/"),
                src,
            })
        })
        .collect()
}
