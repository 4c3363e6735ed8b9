//! Where a run spent its time, step by step, in the layout of Table 1 of the
//! Patterns paper: transfer, compute and publish time, and the overhead the
//! engine added around them ([`timing`]), and over many runs of a flow
//! ([`flow`]).
//!
//! One split of a step's time, used by every table and page: from the
//! first try's `ready` to the last try's `recorded`, the step was
//! *queued* (ready → dispatched: no pilot took it yet), in *backoff*
//! (a failed try's end → the next try's ready), running earlier tries
//! that were *retried* (their started → finished), running the last
//! try (the *action* time, which the transfer/compute/publish columns
//! show), and the rest is the engine's *overhead* (dispatch → start,
//! finish → record). The parts add up to the total.

pub mod flow;

use serde::Serialize;

use crate::api::{AttemptRow, RunDetail};

/// Timing of one step (its last attempt; earlier tries count as overhead).
#[derive(Clone, Debug, Serialize)]
pub struct StepTiming {
    pub step: String,
    pub action: String,
    pub category: String,
    pub state: String,
    pub tries: usize,
    /// Ready → dispatched to a pilot, over the tries.
    pub queued_s: f64,
    /// A failed try's end → the next try's ready: the retry delay.
    pub backoff_s: f64,
    /// Started → finished on the pilot (last attempt).
    pub action_s: f64,
    /// Started → finished of the earlier tries: work that was redone.
    pub retried_s: f64,
    /// The engine's share: the total less queued, backoff, retried and
    /// action time (dispatch → start and finish → record, over the tries).
    pub overhead_s: f64,
    /// Ready (first attempt) → recorded (last attempt).
    pub total_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunTiming {
    pub run: u64,
    pub flow: String,
    pub state: String,
    pub steps: Vec<StepTiming>,
    pub transfer_s: f64,
    pub compute_s: f64,
    pub publish_s: f64,
    /// The steps' queued, backoff and retried time, summed (steps that
    /// overlap can add up to more than the run's wall time).
    pub queued_s: f64,
    pub backoff_s: f64,
    pub retried_s: f64,
    /// The run's wall time less all of the above: the engine's overhead
    /// (never below zero).
    pub overhead_s: f64,
    /// Created → finished.
    pub total_s: f64,
    /// The engine's overhead as a share of the wall time.
    pub overhead_pct: f64,
    /// Data moved between places, by (from, to): transfer steps with a
    /// remote end and staged inputs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<SitePair>,
}

/// What moved from one place to another in a run: a remote (`aps`) or the
/// site of the pilot that moved it (`this site` where one site served).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SitePair {
    pub from: String,
    pub to: String,
    /// Transfer steps and staged inputs that went this way.
    pub moves: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The pilot's site for attempt `a`, as its `placed` event names it.
fn site_of(d: &RunDetail, a: &AttemptRow) -> String {
    d.events
        .iter()
        .filter(|e| e.kind == "placed" && e.attempt_id == Some(a.id))
        .filter_map(|e| {
            e.detail
                .as_deref()?
                .strip_prefix("site ")?
                .split(' ')
                .next()
        })
        .next_back()
        .map_or_else(|| "this site".to_string(), String::from)
}

/// Every move of the run's succeeded attempts, summed by site pair.
fn moved(d: &RunDetail) -> Vec<SitePair> {
    let mut pairs: Vec<SitePair> = Vec::new();
    let mut add = |from: String, to: String, bytes: u64, seconds: f64| match pairs
        .iter_mut()
        .find(|p| p.from == from && p.to == to)
    {
        Some(p) => {
            p.moves += 1;
            p.bytes += bytes;
            p.seconds += seconds;
        }
        None => pairs.push(SitePair {
            from,
            to,
            moves: 1,
            bytes,
            seconds,
        }),
    };
    for a in d.attempts.iter().filter(|a| a.state == "succeeded") {
        let Some(out) = &a.outputs else { continue };
        let here = || site_of(d, a);
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        if a.action == "transfer" {
            if let Some(remote) = out["remote"].as_str() {
                let (from, to) = match out["direction"].as_str() {
                    Some("push") => (here(), remote.to_string()),
                    _ => (remote.to_string(), here()),
                };
                let seconds = out["seconds"]
                    .as_f64()
                    .unwrap_or_else(|| secs(a.started_us, a.finished_us));
                add(from, to, num(out, "bytes") as u64, seconds);
            }
        }
        if let Some(staged) = out["staged"].as_object() {
            for st in staged.values() {
                let from = st["remote"].as_str().map_or_else(here, String::from);
                add(from, here(), num(st, "bytes") as u64, num(st, "seconds"));
            }
        }
    }
    pairs
}

fn secs(a: Option<i64>, b: Option<i64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => (b - a) as f64 / 1e6,
        _ => 0.0,
    }
}

fn category(action: &str) -> &'static str {
    match action {
        "transfer" => "transfer",
        "publish" => "publish",
        _ => "compute",
    }
}

pub fn timing(d: &RunDetail) -> RunTiming {
    let mut by_step: Vec<Vec<&AttemptRow>> = Vec::new();
    for a in &d.attempts {
        if by_step.len() <= a.step_index {
            by_step.resize(a.step_index + 1, Vec::new());
        }
        by_step[a.step_index].push(a);
    }
    let mut steps = Vec::new();
    for atts in by_step.iter().filter(|v| !v.is_empty()) {
        let first = atts[0];
        let last = atts[atts.len() - 1];
        let action_s = secs(last.started_us, last.finished_us);
        let end = last.recorded_us.or(last.finished_us);
        let total_s = secs(first.ready_us, end);
        let queued_s: f64 = atts.iter().map(|a| secs(a.ready_us, a.dispatched_us)).sum();
        let backoff_s: f64 = atts
            .windows(2)
            .map(|w| secs(w[0].recorded_us.or(w[0].finished_us), w[1].ready_us))
            .sum();
        let retried_s: f64 = atts[..atts.len() - 1]
            .iter()
            .map(|a| secs(a.started_us, a.finished_us))
            .sum();
        steps.push(StepTiming {
            step: last.step.clone(),
            action: last.action.clone(),
            category: category(&last.action).to_string(),
            state: last.state.to_string(),
            tries: atts
                .iter()
                .filter(|a| !matches!(a.state.as_str(), "skipped"))
                .count(),
            queued_s,
            backoff_s,
            action_s,
            retried_s,
            overhead_s: (total_s - queued_s - backoff_s - retried_s - action_s).max(0.0),
            total_s,
        });
    }
    let sum = |c: &str| {
        steps
            .iter()
            .filter(|s| s.category == c)
            .map(|s| s.action_s)
            .sum::<f64>()
    };
    let (transfer_s, compute_s, publish_s) = (sum("transfer"), sum("compute"), sum("publish"));
    let end = d
        .run
        .finished_us
        .or_else(|| d.attempts.iter().filter_map(|a| a.recorded_us).max());
    let total_s = secs(Some(d.run.created_us), end);
    let of = |f: fn(&StepTiming) -> f64| steps.iter().map(f).sum::<f64>();
    let (queued_s, backoff_s, retried_s) =
        (of(|s| s.queued_s), of(|s| s.backoff_s), of(|s| s.retried_s));
    let overhead_s =
        (total_s - transfer_s - compute_s - publish_s - queued_s - backoff_s - retried_s).max(0.0);
    RunTiming {
        run: d.run.id,
        flow: d.run.flow.clone(),
        state: d.run.state.to_string(),
        steps,
        transfer_s,
        compute_s,
        publish_s,
        queued_s,
        backoff_s,
        retried_s,
        overhead_s,
        total_s,
        overhead_pct: if total_s > 0.0 {
            100.0 * overhead_s / total_s
        } else {
            0.0
        },
        moved: moved(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AttemptState, RunRow, RunState};

    fn attempt(number: u32, state: AttemptState, t: [i64; 5]) -> AttemptRow {
        AttemptRow {
            id: number as u64,
            run_id: 1,
            step: "fit".into(),
            step_index: 0,
            number,
            action: "kernel".into(),
            state,
            params: None,
            pilot_id: Some(1),
            ready_us: Some(t[0]),
            dispatched_us: Some(t[1]),
            started_us: Some(t[2]),
            finished_us: Some(t[3]),
            recorded_us: Some(t[4]),
            outputs: None,
            error: None,
            exit_code: None,
            counts_retry: true,
        }
    }

    /// A step that failed once and ran again: its queue wait, the retry's
    /// back-off, the failed try's run and the engine's share are told
    /// apart, and add up to the step's (and the run's) total.
    #[test]
    fn queued_backoff_retried_and_overhead_are_apart() {
        const S: i64 = 1_000_000;
        let d = RunDetail {
            run: RunRow {
                id: 1,
                flow: "f".into(),
                flow_version: 1,
                input: serde_json::json!({}),
                dir: "/tmp".into(),
                state: RunState::Succeeded,
                error: None,
                created_us: 0,
                started_us: Some(0),
                finished_us: Some(40 * S),
            },
            attempts: vec![
                // Queued 5 s, 1 s to start, failed after 4 s, recorded 1 s on.
                attempt(1, AttemptState::Failed, [0, 5 * S, 6 * S, 10 * S, 11 * S]),
                // Back-off 9 s, queued 2 s, ran 15 s.
                attempt(
                    2,
                    AttemptState::Succeeded,
                    [20 * S, 22 * S, 22 * S, 37 * S, 38 * S],
                ),
            ],
            events: vec![],
        };
        let t = timing(&d);
        let s = &t.steps[0];
        assert_eq!(s.tries, 2);
        assert_eq!(
            (
                s.queued_s,
                s.backoff_s,
                s.retried_s,
                s.action_s,
                s.overhead_s,
                s.total_s
            ),
            (7.0, 9.0, 4.0, 15.0, 3.0, 38.0)
        );
        assert_eq!(t.compute_s, 15.0);
        assert_eq!((t.queued_s, t.backoff_s, t.retried_s), (7.0, 9.0, 4.0));
        // 40 s of wall time: 2 s before the step was ready and after it
        // was recorded are the engine's too.
        assert_eq!(t.overhead_s, 5.0);
        assert_eq!(t.overhead_pct, 12.5);
    }
}
