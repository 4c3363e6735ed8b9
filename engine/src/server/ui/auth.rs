//! The browser's side of the API token: `/ui/login` checks it once and keeps
//! it in a cookie the page's script cannot read (HttpOnly) and other sites
//! cannot make the browser send (SameSite=Strict).

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::super::App;
use super::render;

const COOKIE: &str = "beamflow_token";

/// The token a request presents: `Authorization: Bearer T`, else the
/// page's cookie.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.trim())
    })
}

/// Compares in time independent of where the strings differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Pages without a valid token go to the login page, which says where the
/// token comes from.
pub(super) async fn require(State(app): State<App>, req: Request, next: Next) -> Response {
    match presented_token(req.headers()) {
        Some(t) if same(t.as_bytes(), app.token.as_bytes()) => next.run(req).await,
        _ => {
            let back = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui/runs".into());
            let to = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &back)
                .finish();
            Redirect::to(&format!("/ui/login?{to}")).into_response()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    token: Option<String>,
    next: Option<String>,
}

/// `GET /ui/login?token=T` (the link `beamflow ui` prints) signs in and
/// moves on, so the token leaves the address bar; without a token it shows
/// the form.
pub(super) async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    match q.token {
        Some(t) => sign_in(&app, &t, q.next.as_deref()),
        None => render(
            "login.html",
            minijinja::context! { next => q.next, error => None::<String> },
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) async fn login_form(State(app): State<App>, Form(f): Form<LoginForm>) -> Response {
    sign_in(&app, &f.token, f.next.as_deref())
}

fn sign_in(app: &App, token: &str, next: Option<&str>) -> Response {
    let token = token.trim();
    if !same(token.as_bytes(), app.token.as_bytes()) {
        let mut r = render(
            "login.html",
            minijinja::context! {
                next => next,
                error => "That is not this server's token (BEAMFLOW_HOME/token on the server host).",
            },
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    // Only paths of this page: never an open redirect to another site.
    let to = next
        .filter(|n| n.starts_with("/ui/") && !n.starts_with("//"))
        .unwrap_or("/ui/runs");
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to(to)).into_response()
}

pub(super) async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}
