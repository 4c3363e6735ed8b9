//! Where a run spent its time, step by step, in the layout of Table 1 of the
//! Patterns paper: transfer, compute and publish time, and the overhead the
//! engine added around them ([`timing`]), and over many runs of a flow
//! ([`flow`]).

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
    /// Ready → dispatched to a pilot (last attempt).
    pub queued_s: f64,
    /// Started → finished on the pilot.
    pub action_s: f64,
    /// Ready (first attempt) → recorded (last attempt), minus the action time.
    pub overhead_s: f64,
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
    /// Run wall time minus the action time on its critical path.
    pub overhead_s: f64,
    pub total_s: f64,
    pub overhead_pct: f64,
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
        steps.push(StepTiming {
            step: last.step.clone(),
            action: last.action.clone(),
            category: category(&last.action).to_string(),
            state: last.state.to_string(),
            tries: atts
                .iter()
                .filter(|a| !matches!(a.state.as_str(), "skipped"))
                .count(),
            queued_s: secs(last.ready_us, last.dispatched_us),
            action_s,
            overhead_s: (total_s - action_s).max(0.0),
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
    let overhead_s = (total_s - transfer_s - compute_s - publish_s).max(0.0);
    RunTiming {
        run: d.run.id,
        flow: d.run.flow.clone(),
        state: d.run.state.to_string(),
        steps,
        transfer_s,
        compute_s,
        publish_s,
        overhead_s,
        total_s,
        overhead_pct: if total_s > 0.0 {
            100.0 * overhead_s / total_s
        } else {
            0.0
        },
    }
}
