//! `/api/alloc`: allocation queues (add, list, pause, resume, remove) and their log.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{ask, internal, read};
use super::core::{AllocMsg, ApiError, CoreMsg};
use super::App;
use crate::alloc::QueueSpec;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/alloc", post(add).get(list))
        .route("/api/alloc/log", get(log))
        .route("/api/alloc/{id}", axum::routing::delete(remove))
        .route("/api/alloc/{id}/pause", post(pause))
        .route("/api/alloc/{id}/resume", post(resume))
}

async fn add(State(app): State<App>, Json(spec): Json<QueueSpec>) -> Result<Json<Value>, ApiError> {
    let id = ask(&app, |reply| {
        CoreMsg::Alloc(AllocMsg::Add {
            spec: Box::new(spec),
            reply,
        })
    })
    .await?;
    Ok(Json(json!({ "id": id })))
}

async fn list(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let q = ask(&app, |reply| CoreMsg::Alloc(AllocMsg::List { reply })).await?;
    Ok(Json(serde_json::to_value(q).map_err(internal)?))
}

async fn pause(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Value>, ApiError> {
    ask(&app, |reply| CoreMsg::Alloc(AllocMsg::Pause { id, reply })).await?;
    Ok(Json(
        json!({ "message": format!("allocation queue {id} paused") }),
    ))
}

async fn resume(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Value>, ApiError> {
    ask(&app, |reply| CoreMsg::Alloc(AllocMsg::Resume { id, reply })).await?;
    Ok(Json(
        json!({ "message": format!("allocation queue {id} resumed") }),
    ))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    cancel: bool,
}

async fn remove(
    State(app): State<App>,
    Path(id): Path<u64>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    ask(&app, |reply| {
        CoreMsg::Alloc(AllocMsg::Remove {
            id,
            cancel: q.cancel,
            reply,
        })
    })
    .await?;
    Ok(Json(
        json!({ "message": format!("allocation queue {id} removed") }),
    ))
}

#[derive(Deserialize)]
struct LogQuery {
    queue: Option<u64>,
    limit: Option<u32>,
}

async fn log(State(app): State<App>, Query(q): Query<LogQuery>) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    let rows = read(&app, move |c| crate::store::alloc_log(c, q.queue, limit)).await?;
    Ok(Json(serde_json::to_value(rows).map_err(internal)?))
}
