//! `/ui/flows`: the registered flows with their runs; `/ui/flows/{name}`:
//! the flow's report over its newest runs — the same numbers and figures as
//! `beamflow report` (Table 1, Figures 5 and 6 of the Patterns paper).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::super::api::read;
use super::super::core::ApiError;
use super::super::App;
use super::runs::newest;
use super::{fail, render};
use crate::report::flow::{self as flow_report, FlowReport};
use crate::store;

#[derive(Serialize)]
struct FlowView {
    name: String,
    version: u32,
    description: String,
    steps: Vec<String>,
    triggers: Vec<String>,
    /// (state, runs)
    runs: Vec<(String, u64)>,
}

pub(super) async fn list(State(app): State<App>) -> Response {
    let data = read(&app, |c| Ok((store::flows(c)?, store::run_counts(c)?))).await;
    let (flows, counts) = match data {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut by_flow: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (flow, state, n) in counts {
        by_flow.entry(flow).or_default().push((state, n));
    }
    let views: Vec<FlowView> = newest(&flows)
        .into_iter()
        .map(|f| FlowView {
            name: f.name.clone(),
            version: f.version,
            description: f.spec.description.clone(),
            steps: f
                .spec
                .steps
                .iter()
                .map(|s| match &s.kernel {
                    Some(k) => format!("{} ({k})", s.name),
                    None => format!("{} ({})", s.name, s.action.name()),
                })
                .collect(),
            triggers: f
                .spec
                .triggers
                .iter()
                .map(|t| format!("{}/{}", t.dir.trim_end_matches('/'), t.pattern))
                .collect(),
            runs: by_flow.remove(&f.name).unwrap_or_default(),
        })
        .collect();
    render(
        "flows.html",
        minijinja::context! { nav => "flows", flows => views },
    )
}

#[derive(Deserialize)]
pub(super) struct ReportQuery {
    limit: Option<usize>,
}

impl ReportQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(1000).clamp(1, 100_000)
    }
}

async fn report(app: &App, name: &str, limit: usize) -> Result<FlowReport, ApiError> {
    let n = name.to_string();
    let (runs, attempts) = read(app, move |c| store::flow_history(c, &n, limit)).await?;
    Ok(flow_report::summarise(name, runs, attempts, 0))
}

pub(super) async fn page(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let n = name.clone();
    let flow = match read(&app, move |c| store::flow(c, &n, None)).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return fail(ApiError::new(
                404,
                format!("flow `{name}` is not registered"),
            ))
        }
        Err(e) => return fail(e),
    };
    let limit = q.limit();
    let r = match report(&app, &name, limit).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    render(
        "flow.html",
        minijinja::context! {
            nav => "flows",
            flow => flow.spec,
            source => flow.source,
            report => r,
            limit,
        },
    )
}

/// `/ui/flows/{name}/runtimes.png` and `…/concurrency.png`, drawn on request.
pub(super) async fn plot(
    State(app): State<App>,
    Path((name, plot)): Path<(String, String)>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let draw = match plot.as_str() {
        "runtimes.png" => flow_report::boxplots,
        "concurrency.png" => flow_report::concurrency_plot,
        _ => return fail(ApiError::new(404, format!("no plot `{plot}`"))),
    };
    let r = match report(&app, &name, q.limit()).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let png = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("plot.png");
        draw(&r, &path)?;
        Ok(std::fs::read(&path)?)
    })
    .await;
    match png {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Ok(Err(e)) => fail(ApiError::new(404, format!("{e:#}"))),
        Err(e) => fail(ApiError::new(500, e.to_string())),
    }
}
