//! The HTTP API. Every route but `/health` needs the token: `Authorization:
//! Bearer TOKEN`, or the web page's cookie.

use std::collections::HashSet;
use std::convert::Infallible;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::oneshot;

use super::core::{ApiError, CoreMsg, Reply};
use super::App;
use crate::api::{
    CatalogRow, ErrorBody, EventsQuery, FlowRow, Health, History, HistoryQuery, Message, PilotRow,
    RegisterFlow, Registered, RunDetail, RunExplain, RunFilter, RunId, RunRow, SubmitRuns,
    Submitted, VersionQuery,
};
use crate::store;

pub(crate) fn router(app: App) -> Router {
    let api = Router::new()
        .route("/api/flows", post(register_flow).get(list_flows))
        .route("/api/flows/{name}", get(show_flow))
        .route("/api/runs", post(submit_runs).get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/retry", post(retry_run))
        .route("/api/runs/{id}/explain", get(explain_run))
        .route("/api/events", get(events))
        .route("/api/pilots", get(list_pilots))
        .route("/api/catalog", get(search_catalog))
        .route("/api/report", get(report_data))
        .route("/api/pilot", get(super::pilot_conn::upgrade))
        .route("/api/agent", get(super::agent_conn::upgrade))
        .route("/api/sites", get(list_sites))
        .route("/api/ui/code", post(super::ui::issue_code))
        .merge(super::api_alloc::routes())
        .merge(super::api_tokens::routes())
        .merge(super::api_admin::routes())
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .merge(super::ui::routes(app.clone()))
        .with_state(app)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message,
        };
        (status, Json(body)).into_response()
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, e.to_string())
}

/// The token comes as `Authorization: Bearer T` (CLI, pilots); the web
/// page's session cookie opens only what the page needs (see `ui::auth`).
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    match admit(&app, req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether the credentials in `headers` open `method path`.
fn admit(app: &App, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    use super::ui::Caller;
    match super::ui::caller(app, headers) {
        Caller::Token(role) => {
            let need = super::tokens::needed(method, path);
            if role.opens(need) {
                Ok(())
            } else {
                Err(ApiError::new(
                    403,
                    format!(
                        "{} token does not open {method} {path}: it needs {} token",
                        a_role(role),
                        a_role(need)
                    ),
                ))
            }
        }
        Caller::Session(role) if super::ui::session_may(role, method, path, headers) => Ok(()),
        Caller::Session(_) => Err(ApiError::new(
            403,
            "the web page's session does not open this: send `Authorization: Bearer TOKEN`",
        )),
        Caller::Wrong => Err(ApiError::new(401, "invalid token")),
        Caller::Nobody => Err(ApiError::new(401, "missing token: send `Authorization: Bearer TOKEN` (the token is in BEAMFLOW_HOME/token)")),
    }
}

/// "a viewer", "an admin".
fn a_role(r: super::tokens::Role) -> String {
    match r {
        super::tokens::Role::Admin => "an admin".into(),
        r => format!("a {r}"),
    }
}

/// A request's credentials, kept by a connection that outlives the request
/// (an event stream, a pilot's socket) to be checked again every
/// [`Recheck::EVERY`]: a revoked token, or the old home token after its
/// grace, ends the connection instead of holding it open for ever.
#[derive(Clone)]
pub(super) struct Recheck {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Recheck {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    pub fn new(method: Method, path: &str, headers: &HeaderMap) -> Self {
        let mut kept = HeaderMap::new();
        for name in [
            axum::http::header::AUTHORIZATION,
            axum::http::header::COOKIE,
        ] {
            if let Some(v) = headers.get(&name) {
                kept.insert(name, v.clone());
            }
        }
        Recheck {
            method,
            path: path.to_string(),
            headers: kept,
        }
    }

    pub fn still_admitted(&self, app: &App) -> bool {
        admit(app, &self.method, &self.path, &self.headers).is_ok()
    }
}

async fn health() -> Json<Health> {
    Json(Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        schema: store::Store::schema_version(),
    })
}

pub(super) async fn ask<T>(
    app: &App,
    make: impl FnOnce(Reply<T>) -> CoreMsg,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(make(tx))
        .map_err(|_| ApiError::new(503, "server is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::new(503, "server is shutting down"))?
}

pub(super) async fn read<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&mut store::Db) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let st = app.store.clone();
    tokio::task::spawn_blocking(move || st.read(f))
        .await
        .map_err(internal)?
        .map_err(internal)
}

async fn register_flow(
    State(app): State<App>,
    Json(b): Json<RegisterFlow>,
) -> Result<Json<Registered>, ApiError> {
    let path = b.path.unwrap_or_else(|| "<api>".to_string());
    let spec = crate::flow::parse(&b.source, &path, Some(&app.site))
        .map_err(|e| ApiError::new(400, e.to_string()))?;
    let for_triggers = spec.clone();
    let r = ask(&app, |reply| CoreMsg::Register {
        spec,
        source: b.source,
        path,
        reply,
    })
    .await?;
    if r.changed {
        app.triggers.flow(for_triggers);
    }
    Ok(Json(r))
}

async fn list_flows(State(app): State<App>) -> Result<Json<Vec<FlowRow>>, ApiError> {
    Ok(Json(read(&app, store::flows).await?))
}

async fn show_flow(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<FlowRow>, ApiError> {
    let n = name.clone();
    let f = read(&app, move |c| store::flow(c, &n, q.version)).await?;
    match f {
        Some(f) => Ok(Json(f)),
        None => Err(ApiError::new(
            404,
            format!("flow `{name}` is not registered"),
        )),
    }
}

async fn submit_runs(
    State(app): State<App>,
    Json(b): Json<SubmitRuns>,
) -> Result<Json<Submitted>, ApiError> {
    let inputs = match (b.inputs, b.input) {
        (Some(_), Some(_)) => return Err(ApiError::new(400, "give `input` or `inputs`, not both")),
        (Some(v), None) if v.is_empty() => return Err(ApiError::new(400, "`inputs` is empty")),
        (Some(v), None) => v,
        (None, i) => vec![i.unwrap_or(Value::Null)],
    };
    let ids = ask(&app, |reply| CoreMsg::Submit {
        flow: b.flow,
        version: b.version,
        inputs,
        reply,
    })
    .await?;
    Ok(Json(Submitted { runs: ids }))
}

/// The newest `limit` runs of a flow with all their attempts, for
/// `beamflow report`.
async fn report_data(
    State(app): State<App>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let (runs, attempts) = read(&app, move |c| store::flow_history(c, &q.flow, limit)).await?;
    Ok(Json(History { runs, attempts }))
}

async fn list_runs(
    State(app): State<App>,
    Query(f): Query<RunFilter>,
) -> Result<Json<Vec<RunRow>>, ApiError> {
    Ok(Json(read(&app, move |c| store::runs(c, &f)).await?))
}

async fn show_run(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<RunDetail>, ApiError> {
    match read(&app, move |c| store::run(c, id)).await? {
        Some(d) => Ok(Json(d)),
        None => Err(ApiError::new(404, format!("no run {id}"))),
    }
}

async fn cancel_run(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<Message>, ApiError> {
    let msg = ask(&app, |reply| CoreMsg::Cancel {
        run: RunId(id),
        reply,
    })
    .await?;
    Ok(Json(Message::new(msg)))
}

async fn retry_run(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Message>, ApiError> {
    let msg = ask(&app, |reply| CoreMsg::Retry {
        run: RunId(id),
        reply,
    })
    .await?;
    Ok(Json(Message::new(msg)))
}

/// Why the run's live steps are where they are (ready, on which pilot).
async fn explain_run(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<RunExplain>, ApiError> {
    let r = ask(&app, |reply| CoreMsg::Explain {
        run: RunId(id),
        reply,
    })
    .await?;
    if r.steps.is_empty() && read(&app, move |c| store::run(c, id)).await?.is_none() {
        return Err(ApiError::new(404, format!("no run {id}")));
    }
    Ok(Json(r))
}

/// Server-sent events: one `run` event per change of a watched run. Clients
/// subscribe first, then read the current state, so nothing is missed.
async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter: Option<HashSet<u64>> = match q.runs {
        None => None,
        Some(s) => Some(
            s.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| x.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| ApiError::new(400, "runs: expected comma-separated run ids"))?,
        ),
    };
    let rx = app.updates.subscribe();
    let check = Recheck::new(Method::GET, "/api/events", &headers);
    let due = tokio::time::Instant::now() + Recheck::EVERY;
    let state = (rx, filter, app, check, due);
    let stream =
        futures_util::stream::unfold(state, |(mut rx, filter, app, check, mut due)| async move {
            loop {
                let got = tokio::select! {
                    got = rx.recv() => got,
                    _ = tokio::time::sleep_until(due) => {
                        // The stream ends with the credentials it was opened
                        // with; a client reconnecting must present good ones.
                        if !check.still_admitted(&app) {
                            return None;
                        }
                        due += Recheck::EVERY;
                        continue;
                    }
                };
                let ev = match got {
                    Ok(u) if filter.as_ref().is_some_and(|f| !f.contains(&u.run)) => continue,
                    Ok(u) => Event::default()
                        .event("run")
                        .json_data(&u)
                        .unwrap_or_default(),
                    // The client fell behind; tell it to re-read state.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(_) => return None,
                };
                return Some((Ok(ev), (rx, filter, app, check, due)));
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn list_sites(State(app): State<App>) -> Result<Json<Vec<crate::api::SiteInfo>>, ApiError> {
    let sites = ask(&app, |reply| {
        CoreMsg::Agent(super::core::AgentMsg::List { reply })
    })
    .await?;
    Ok(Json(sites))
}

async fn list_pilots(State(app): State<App>) -> Result<Json<Vec<PilotRow>>, ApiError> {
    Ok(Json(read(&app, store::pilots).await?))
}

/// `?q=TEXT&field=KEY=VALUE&field=…&limit=N`
struct CatalogQuery {
    q: Option<String>,
    field: Vec<String>,
    limit: Option<usize>,
}

async fn search_catalog(
    State(app): State<App>,
    raw: axum::extract::RawQuery,
) -> Result<Json<Vec<CatalogRow>>, ApiError> {
    let raw = raw.0.unwrap_or_default();
    let q: CatalogQuery = parse_catalog_query(&raw)?;
    let fields = q
        .field
        .iter()
        .map(|f| field_filter(f))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = q.limit.unwrap_or(50);
    let text = q.q.clone();
    let rows = read(&app, move |c| {
        store::catalog_search(c, text.as_deref(), &fields, None, limit)
    })
    .await?;
    Ok(Json(rows))
}

/// A catalog filter `KEY=VALUE`, KEY a dotted path into the record.
pub(super) fn field_filter(f: &str) -> Result<(String, String), ApiError> {
    let (k, v) = f
        .split_once('=')
        .ok_or_else(|| ApiError::new(400, format!("field `{f}`: expected KEY=VALUE")))?;
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(ApiError::new(
            400,
            format!("field `{k}`: use a dotted path such as input.path"),
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `field` may repeat, which serde's query parser does not collect into a Vec.
fn parse_catalog_query(raw: &str) -> Result<CatalogQuery, ApiError> {
    let mut q = CatalogQuery {
        q: None,
        field: vec![],
        limit: None,
    };
    for (k, v) in url_pairs(raw) {
        match k.as_str() {
            "q" => q.q = Some(v),
            "field" => q.field.push(v),
            "limit" => {
                q.limit = Some(
                    v.parse()
                        .map_err(|_| ApiError::new(400, "limit: expected a number"))?,
                )
            }
            other => {
                return Err(ApiError::new(
                    400,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    Ok(q)
}

fn url_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}
