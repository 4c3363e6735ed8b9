//! `/ui/runs/{id}`: one run — where its time went (timeline and the Table 1
//! split), every attempt with its outputs, logs and error, and the files it
//! wrote. While the run is in flight the page follows it through
//! `/api/events?runs=ID`.

use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::super::api::read;
use super::super::core::{task_dir, ApiError, CoreMsg};
use super::super::App;
use super::{fail, files, gantt, render, view};
use crate::api::RunId;
use crate::store::{self, AttemptRow};

/// The end of a log the page shows; the whole file is a link away.
const LOG_TAIL: u64 = 32 * 1024;
/// Files listed per run.
const MAX_FILES: usize = 400;

#[derive(Serialize)]
struct AttemptView {
    id: u64,
    step: String,
    number: u32,
    action: String,
    state: String,
    pilot: Option<u64>,
    queued_s: Option<f64>,
    running_s: Option<f64>,
    overhead_s: Option<f64>,
    error: Option<String>,
    exit_code: Option<i32>,
    outputs: Option<String>,
    params: Option<String>,
    logs: Vec<Log>,
}

#[derive(Serialize)]
struct Log {
    name: String,
    path: String,
    text: String,
}

fn pretty(v: &Option<Value>) -> Option<String> {
    v.as_ref()
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
}

fn attempt_view(a: &AttemptRow, run_dir: &str) -> AttemptView {
    let dir = task_dir(run_dir, &a.step, a.number);
    let logs = ["stdout", "stderr"]
        .iter()
        .filter_map(|n| {
            let p = Path::new(&dir).join(n);
            files::tail(&p, LOG_TAIL)
                .filter(|t| !t.is_empty())
                .map(|text| Log {
                    name: n.to_string(),
                    path: p.display().to_string(),
                    text,
                })
        })
        .collect();
    let over = match (
        view::span_s(a.dispatched_us, a.started_us),
        view::span_s(a.finished_us, a.recorded_us),
    ) {
        (None, None) => None,
        (x, y) => Some(x.unwrap_or(0.0) + y.unwrap_or(0.0)),
    };
    AttemptView {
        id: a.id,
        step: a.step.clone(),
        number: a.number,
        action: a.action.clone(),
        state: a.state.to_string(),
        pilot: a.pilot_id,
        queued_s: view::span_s(a.ready_us, a.dispatched_us),
        running_s: view::span_s(a.started_us, a.finished_us),
        overhead_s: over,
        error: a.error.clone(),
        exit_code: a.exit_code,
        outputs: pretty(&a.outputs),
        params: pretty(&a.params),
        logs,
    }
}

pub(super) async fn page(State(app): State<App>, UrlPath(id): UrlPath<u64>) -> Response {
    let detail = match read(&app, move |c| store::run(c, id)).await {
        Ok(Some(d)) => d,
        Ok(None) => return fail(ApiError::new(404, format!("no run {id}"))),
        Err(e) => return fail(e),
    };
    let now = crate::util::now_us();
    let timeline = gantt::svg(&detail, now);
    let timing = crate::report::timing(&detail);
    let dir = detail.run.dir.clone();
    let gathered = tokio::task::spawn_blocking({
        let attempts = detail.attempts.clone();
        move || {
            let views: Vec<AttemptView> = attempts.iter().map(|a| attempt_view(a, &dir)).collect();
            (
                views,
                files::list(Path::new(&dir), MAX_FILES),
                Path::new(&dir).is_dir(),
            )
        }
    })
    .await;
    let (attempts, (listing, more), visible) = match gathered {
        Ok(g) => g,
        Err(e) => {
            return fail(ApiError::new(
                500,
                format!("run {id}: reading its files failed: {e}"),
            ))
        }
    };
    let live = !detail.run.state.is_finished();
    // What the ready steps wait for, in the core's words.
    let waiting: Vec<(String, String)> = if live {
        super::super::api::ask(&app, |reply| CoreMsg::Explain {
            run: RunId(id),
            reply,
        })
        .await
        .map(|e| {
            e.steps
                .into_iter()
                .filter_map(|s| s.waiting.map(|w| (s.step, w)))
                .collect()
        })
        .unwrap_or_default()
    } else {
        vec![]
    };
    let run = &detail.run;
    render(
        "run.html",
        minijinja::context! {
            nav => "runs",
            run,
            input => serde_json::to_string_pretty(&run.input).unwrap_or_default(),
            live,
            waiting,
            timeline,
            timing,
            attempts,
            files => listing,
            more_files => more,
            dir_visible => visible,
            events => detail.events,
        },
    )
}
