//! `/ui/runs`: the runs, newest first, with filters and a form to start one.
//! The page's script keeps the list live from `/api/events`: a changed run's
//! row is fetched again from `/ui/runs/{id}/row`, so rows are rendered in one
//! place whether the page is new or live.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::api::read;
use super::super::core::ApiError;
use super::super::App;
use super::{fail, render, view};
use crate::api::RunState;
use crate::store::{self, FlowRow, RunFilter, RunRow};

/// One row of the list.
#[derive(Serialize)]
pub(super) struct RunView {
    id: u64,
    flow: String,
    version: u32,
    state: String,
    created_us: i64,
    elapsed_s: Option<f64>,
    steps_done: usize,
    steps_total: usize,
    error: Option<String>,
    /// The input, compact and cut short.
    input: String,
}

impl RunView {
    fn of(r: RunRow, done: usize, total: usize) -> RunView {
        let mut input = match &r.input {
            Value::Null => String::new(),
            v => v.to_string(),
        };
        if input.chars().count() > 140 {
            input = input.chars().take(140).collect::<String>() + "…";
        }
        let end = r.finished_us.or_else(|| Some(crate::util::now_us()));
        RunView {
            elapsed_s: view::span_s(r.started_us.or(Some(r.created_us)), end),
            id: r.id,
            flow: r.flow,
            version: r.flow_version,
            state: r.state.to_string(),
            created_us: r.created_us,
            steps_done: done,
            steps_total: total,
            error: r.error,
            input,
        }
    }
}

/// Rows for `runs`, with their progress.
fn views(c: &mut store::Db, runs: Vec<RunRow>) -> anyhow::Result<Vec<RunView>> {
    let ids: Vec<u64> = runs.iter().map(|r| r.id).collect();
    let done = store::steps_done(c, &ids)?;
    let totals: HashMap<(String, u32), usize> = store::flows(c)?
        .into_iter()
        .map(|f| ((f.name, f.version), f.spec.steps.len()))
        .collect();
    Ok(runs
        .into_iter()
        .map(|r| {
            let total = totals
                .get(&(r.flow.clone(), r.flow_version))
                .copied()
                .unwrap_or(0);
            let d = done.get(&r.id).copied().unwrap_or(0);
            RunView::of(r, d, total)
        })
        .collect())
}

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    flow: Option<String>,
    state: Option<String>,
    /// Text: the form sends an empty field as `limit=`.
    limit: Option<String>,
}

/// A form's empty field means "any".
fn given(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

pub(super) async fn page(State(app): State<App>, Query(f): Query<Filter>) -> Response {
    let flow = given(f.flow);
    let states: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
    let state = match given(f.state) {
        None => None,
        Some(s) => match s.parse::<RunState>() {
            Ok(st) => Some(st),
            Err(_) => {
                return fail(ApiError::new(
                    400,
                    format!("state `{s}`: expected one of {}", states.join(", ")),
                ))
            }
        },
    };
    let limit = match given(f.limit).map(|l| l.trim().parse::<usize>()) {
        None => 100,
        Some(Ok(n)) => n.clamp(1, 5000),
        Some(Err(_)) => return fail(ApiError::new(400, "show: expected a number of runs")),
    };
    let filter = RunFilter {
        state,
        flow: flow.clone(),
        limit: Some(limit),
        since: None,
        until: None,
    };
    let data = read(&app, move |c| {
        let runs = store::runs(c, &filter)?;
        let runs = views(c, runs)?;
        Ok((runs, store::flows(c)?))
    })
    .await;
    let (runs, flows) = match data {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    render(
        "runs.html",
        minijinja::context! {
            nav => "runs",
            runs,
            flows => newest(&flows),
            inputs => input_templates(&flows),
            states => states,
            flow,
            state,
            limit,
        },
    )
}

/// The newest version of each flow (the store lists newest first per name).
pub(super) fn newest(flows: &[FlowRow]) -> Vec<&FlowRow> {
    let mut out: Vec<&FlowRow> = Vec::new();
    for f in flows {
        if out.last().is_none_or(|l| l.name != f.name) {
            out.push(f);
        }
    }
    out
}

/// Per flow, an input object to start from in the "start a run" form:
/// defaults filled in, required values empty.
fn input_templates(flows: &[FlowRow]) -> String {
    let m: serde_json::Map<String, Value> = newest(flows)
        .into_iter()
        .map(|f| {
            let o: serde_json::Map<String, Value> = f
                .spec
                .inputs
                .iter()
                .map(|i| {
                    let v = i.default.clone().unwrap_or(Value::String(String::new()));
                    (i.name.clone(), v)
                })
                .collect();
            (f.name.clone(), Value::Object(o))
        })
        .collect();
    // Inside a <script> element: `<` must not close it.
    Value::Object(m).to_string().replace('<', "\\u003c")
}

/// One row, for the live list.
pub(super) async fn row(State(app): State<App>, Path(id): Path<u64>) -> Response {
    let data = read(&app, move |c| {
        let runs = store::runs(
            c,
            &RunFilter {
                since: Some(id),
                until: Some(id),
                limit: Some(1),
                ..Default::default()
            },
        )?;
        views(c, runs)
    })
    .await;
    match data {
        Ok(mut v) if !v.is_empty() => {
            render("run_row.html", minijinja::context! { r => v.remove(0) })
        }
        Ok(_) => fail(ApiError::new(404, format!("no run {id}"))),
        Err(e) => fail(e),
    }
}
