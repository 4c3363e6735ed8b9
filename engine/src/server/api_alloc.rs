//! `/api/alloc`: allocation queues (add, list, pause, resume, remove) and their log.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::api::{ask, read};
use super::core::{AllocMsg, ApiError, CoreMsg};
use super::App;
use crate::api::{LogEntry, LogQuery, Message, QueueAdded, QueueInfo, QueueSpec, RemoveQueue};

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/alloc", post(add).get(list))
        .route("/api/alloc/log", get(log))
        .route("/api/alloc/{id}", axum::routing::delete(remove))
        .route("/api/alloc/{id}/pause", post(pause))
        .route("/api/alloc/{id}/resume", post(resume))
}

async fn add(
    State(app): State<App>,
    Json(spec): Json<QueueSpec>,
) -> Result<Json<QueueAdded>, ApiError> {
    let id = ask(&app, |reply| {
        CoreMsg::Alloc(AllocMsg::Add {
            spec: Box::new(spec),
            reply,
        })
    })
    .await?;
    Ok(Json(QueueAdded { id }))
}

async fn list(State(app): State<App>) -> Result<Json<Vec<QueueInfo>>, ApiError> {
    let q = ask(&app, |reply| CoreMsg::Alloc(AllocMsg::List { reply })).await?;
    Ok(Json(q))
}

async fn pause(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Message>, ApiError> {
    ask(&app, |reply| CoreMsg::Alloc(AllocMsg::Pause { id, reply })).await?;
    Ok(Json(Message::new(format!("allocation queue {id} paused"))))
}

async fn resume(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<Message>, ApiError> {
    ask(&app, |reply| CoreMsg::Alloc(AllocMsg::Resume { id, reply })).await?;
    Ok(Json(Message::new(format!("allocation queue {id} resumed"))))
}

async fn remove(
    State(app): State<App>,
    Path(id): Path<u64>,
    Query(q): Query<RemoveQueue>,
) -> Result<Json<Message>, ApiError> {
    ask(&app, |reply| {
        CoreMsg::Alloc(AllocMsg::Remove {
            id,
            cancel: q.cancel,
            reply,
        })
    })
    .await?;
    Ok(Json(Message::new(format!("allocation queue {id} removed"))))
}

async fn log(
    State(app): State<App>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    Ok(Json(
        read(&app, move |c| crate::store::alloc_log(c, q.queue, limit)).await?,
    ))
}
