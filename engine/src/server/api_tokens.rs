//! `/api/tokens`: named tokens with roles, and rotating the home token
//! (admin only; see [`super::tokens`]).

use super::api::internal;
use super::core::ApiError;
use super::App;
use crate::api::{IssuedToken, NewToken, Revoked, Rotate, Rotated, TokenInfo};
use axum::extract::{Path, State};
use axum::routing::{delete, post};
use axum::{Json, Router};

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/tokens", post(add).get(list))
        .route("/api/tokens/rotate", post(rotate))
        .route("/api/tokens/{name}", delete(revoke))
}

async fn add(
    State(app): State<App>,
    Json(t): Json<NewToken>,
) -> Result<Json<IssuedToken>, ApiError> {
    let token = app
        .tokens
        .write()
        .expect("tokens lock")
        .add(&t.name, t.role)
        .map_err(|e| ApiError::new(400, format!("{e:#}")))?;
    tracing::info!("token `{}` added with role {}", t.name, t.role);
    Ok(Json(IssuedToken {
        name: t.name,
        role: t.role,
        token,
    }))
}

async fn list(State(app): State<App>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(app.tokens.read().expect("tokens lock").list()))
}

async fn revoke(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let gone = app
        .tokens
        .write()
        .expect("tokens lock")
        .revoke(&name)
        .map_err(internal)?;
    if !gone {
        return Err(ApiError::new(404, format!("no token named `{name}`")));
    }
    tracing::info!("token `{name}` revoked");
    Ok(Json(Revoked { revoked: name }))
}

async fn rotate(State(app): State<App>, Json(r): Json<Rotate>) -> Result<Json<Rotated>, ApiError> {
    if !(0.0..=7.0 * 86400.0).contains(&r.grace_s) {
        return Err(ApiError::new(400, "grace_s: between 0 and a week"));
    }
    app.tokens
        .write()
        .expect("tokens lock")
        .rotate(std::time::Duration::from_secs_f64(r.grace_s))
        .map_err(internal)?;
    tracing::info!(
        "home token rotated; the old one is good for {}",
        crate::util::fmt_secs(r.grace_s)
    );
    Ok(Json(Rotated {
        rotated: true,
        grace_s: r.grace_s,
    }))
}
