//! The web page under `/ui/`: live runs, one run's timeline, logs and files,
//! the catalog portal, flow reports, pilots and allocations.
//!
//! Pages are rendered on the server (minijinja templates compiled into the
//! binary) and made live by one small script that listens to the API's
//! server-sent events; nothing is fetched from elsewhere, so the page works on
//! a facility network without internet. The browser signs in once (a
//! one-time link from `beamflow ui`, or the token pasted into the form) and
//! keeps a session cookie derived from the token (see [`auth`]).

mod auth;
mod catalog;
mod files;
mod flows;
mod gantt;
mod pilots;
mod run;
mod runs;
mod view;

use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use minijinja::Environment;
use serde::Serialize;

use super::core::ApiError;
use super::App;

pub use auth::session_key;
pub(crate) use auth::{caller, issue_code, session_may, Caller, Codes};

/// The routes under `/ui/`; all but the login page and the assets need the
/// token.
pub(crate) fn routes(app: App) -> Router<App> {
    let pages = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/runs", get(runs::page))
        .route("/ui/runs/{id}", get(run::page))
        .route("/ui/runs/{id}/row", get(runs::row))
        .route("/ui/file", get(files::serve))
        .route("/ui/catalog", get(catalog::page))
        .route("/ui/flows", get(flows::list))
        .route("/ui/flows/{name}", get(flows::page))
        .route("/ui/flows/{name}/{plot}", get(flows::plot))
        .route("/ui/pilots", get(pilots::page))
        .route_layer(middleware::from_fn_with_state(app, auth::require));
    Router::new()
        .route("/ui/login", get(auth::login).post(auth::login_form))
        .route("/ui/logout", get(auth::logout))
        .route("/ui/assets/{name}", get(asset))
        .merge(pages)
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("error.html", include_str!("templates/error.html")),
        ("runs.html", include_str!("templates/runs.html")),
        ("run_row.html", include_str!("templates/run_row.html")),
        ("run.html", include_str!("templates/run.html")),
        ("catalog.html", include_str!("templates/catalog.html")),
        ("flows.html", include_str!("templates/flows.html")),
        ("flow.html", include_str!("templates/flow.html")),
        ("pilots.html", include_str!("templates/pilots.html")),
    ] {
        env.add_template(name, src)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    view::add_filters(&mut env);
    env
});

/// Renders a page; a template error is a bug, reported as a 500 page.
pub(super) fn render(name: &str, ctx: impl Serialize) -> Response {
    let out = TEMPLATES.get_template(name).and_then(|t| t.render(ctx));
    match out {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("template {name}: {e:#}");
            fail(ApiError::new(500, format!("template {name}: {e}")))
        }
    }
}

/// An error as a page, with the status it stands for.
pub(super) fn fail(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let html = TEMPLATES
        .get_template("error.html")
        .and_then(|t| t.render(minijinja::context! { status => e.status, message => e.message }))
        .unwrap_or_else(|_| e.message.clone());
    (status, Html(html)).into_response()
}

/// The page's stylesheet and script, compiled in: no CDN, no other server.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "live.js" => (
            include_str!("assets/live.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
