//! Results and what follows them: a success advances the run; a failure
//! uses a try and is retried after its back-off, or fails the step and the
//! run once the tries are used up. Infrastructure failures cost no try: an
//! attempt its pilot returned, never received or lost goes back to the
//! queue as a new attempt. A step whose pilots keep dying while they run it
//! is given up after [`MAX_CRASHES`].

use std::time::{Duration, Instant};

use super::{Attempt, Core, RetryDue};
use crate::api::{AttemptId, AttemptState, PilotId, RunId, RunState};
use crate::flow::ActionKind;
use crate::protocol::{Outcome, TaskResult};
use crate::store::Op;
use crate::util::now_us;

use super::runs::StepState;

/// A step is given up on once pilots have died this many times while running
/// it. Such losses cost no try — the pilot, not the step, usually failed — but
/// a step that brings its pilot down (an in-process kernel crash, memory
/// exhaustion) would otherwise take every pilot down in turn, for ever.
pub(super) const MAX_CRASHES: u32 = 3;

impl Core {
    /// A pilot's result for one of its attempts.
    pub(super) fn finished(&mut self, pilot: PilotId, r: TaskResult) {
        let id = AttemptId(r.attempt);
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
            self.requeue_removed(a, id, AttemptState::Cancelled, "stopped by the pilot");
            return;
        }
        let (state, counts) = match r.outcome {
            Outcome::Succeeded => (AttemptState::Succeeded, false),
            Outcome::Failed => (AttemptState::Failed, true),
            Outcome::Cancelled => (AttemptState::Cancelled, false),
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
        self.updated_runs.insert(run_id);
        if r.outcome == Outcome::Succeeded {
            st.state = StepState::Succeeded;
            st.outputs = r.outputs.clone();
            if spec.action == ActionKind::Publish {
                self.catalog(run_id, id, &r.outputs);
            }
            self.advance(run_id);
            return;
        }
        st.failures += 1;
        let (failures, after_attempt) = (st.failures, st.attempts);
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
            let due = RetryDue {
                run: run_id,
                step: a.step,
                after_attempt,
            };
            let at = Instant::now() + Duration::from_secs_f64(delay);
            self.retries.insert((at, due), ());
        } else {
            st.state = StepState::Failed;
            let msg = format!(
                "step `{}` failed after {failures} {}: {err}",
                spec.name,
                if failures == 1 { "try" } else { "tries" }
            );
            self.event(
                Some(run_id),
                Some(id),
                Some(pilot),
                "step_failed",
                Some(msg.clone()),
            );
            self.finish_run(run_id, RunState::Failed, Some(msg));
        }
    }

    /// Starts the retries whose back-off has passed by `now`.
    pub(super) fn retries_due(&mut self, now: Instant) {
        while let Some(&(at, due)) = self.retries.keys().next() {
            if at > now {
                break;
            }
            self.retries.remove(&(at, due));
            self.retry_due(due);
        }
    }

    fn retry_due(&mut self, due: RetryDue) {
        let Some(run) = self.runs.get_mut(&due.run) else {
            return;
        };
        if run.steps.get(due.step).map(|s| (s.state, s.attempts))
            != Some((StepState::Waiting, due.after_attempt))
        {
            return;
        }
        run.steps[due.step].state = StepState::Pending;
        self.start_step(due.run, due.step);
        self.settle(due.run);
    }

    /// Puts a step back in the queue as a new attempt after an infrastructure
    /// failure; the step's retry budget is untouched.
    pub(super) fn requeue(&mut self, attempt: AttemptId, state: AttemptState, why: &str) {
        let Some(a) = self.attempts.remove(&attempt) else {
            return;
        };
        if let Some(p) = a.pilot.and_then(|p| self.pilots.get_mut(&p)) {
            p.release(attempt, &self.requests);
        }
        self.requests.remove(&attempt);
        self.requeue_removed(a, attempt, state, why);
    }

    fn requeue_removed(&mut self, a: Attempt, attempt: AttemptId, state: AttemptState, why: &str) {
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

    /// An attempt of a live run whose pilot is gone: back to the queue, or —
    /// when it was running and pilots have now died [`MAX_CRASHES`] times
    /// running its step — the step fails, and with it the run.
    pub(super) fn attempt_lost(
        &mut self,
        a: Attempt,
        attempt: AttemptId,
        was_running: bool,
        why: &str,
    ) {
        if was_running && self.crashed(&a) >= MAX_CRASHES {
            self.give_up_crashed(a, attempt, why);
        } else {
            self.requeue_removed(a, attempt, AttemptState::Lost, why);
        }
    }

    /// An attempt of a live run whose preemptable pilot at `site` went:
    /// back to the queue, costing the step neither a try nor a crash, and
    /// placed at another site first.
    pub(super) fn attempt_preempted(
        &mut self,
        a: Attempt,
        attempt: AttemptId,
        site: &str,
        why: &str,
    ) {
        if let Some(st) = self
            .runs
            .get_mut(&a.run)
            .and_then(|r| r.steps.get_mut(a.step))
        {
            st.avoid_site = Some(site.to_string());
        }
        self.requeue_removed(a, attempt, AttemptState::Preempted, why);
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

    fn give_up_crashed(&mut self, a: Attempt, attempt: AttemptId, why: &str) {
        self.batch.ops.push(Op::AttemptState {
            id: attempt,
            state: AttemptState::Lost,
            error: Some(why.to_string()),
            at: now_us(),
        });
        let run_id: RunId = a.run;
        let Some(run) = self.runs.get_mut(&run_id) else {
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
            Some(run_id),
            Some(attempt),
            a.pilot,
            "step_failed",
            Some(msg.clone()),
        );
        self.updated_runs.insert(run_id);
        self.finish_run(run_id, RunState::Failed, Some(msg));
    }
}
