//! The browser's side of the API token.
//!
//! The browser never holds the token itself: signing in (with a one-time
//! code from `beamflow ui`, or by pasting the token into the form) sets a
//! cookie holding a session key derived from the token — HttpOnly, so the
//! page's script cannot read it, and SameSite=Strict. Cookies are not kept
//! apart by port, so other services on the same host may see it; the
//! session key therefore opens only the web page, the event stream and
//! starting runs from the page's own origin. Pilots, allocation queues and
//! everything else on the API take the token as `Authorization: Bearer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::super::App;
use super::render;

const COOKIE: &str = "beamflow_session";
/// How long a sign-in code from `beamflow ui` stays good.
const CODE_LIFE: Duration = Duration::from_secs(120);

/// The session key a token gives: a keyed hash, so the cookie does not
/// reveal the token.
pub fn session_key(token: &str) -> String {
    let key = blake3::hash(token.as_bytes());
    blake3::keyed_hash(key.as_bytes(), b"beamflow web session")
        .to_hex()
        .to_string()
}

use crate::server::tokens::{same, Role};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// How a request proved who it is.
#[derive(Debug, PartialEq)]
pub(crate) enum Caller {
    Token(Role),
    Session,
    Nobody,
    /// Presented something, and it was wrong.
    Wrong,
}

pub(crate) fn caller(app: &App, headers: &HeaderMap) -> Caller {
    if let Some(t) = bearer(headers) {
        return app.role_of(t).map_or(Caller::Wrong, Caller::Token);
    }
    match cookie(headers) {
        Some(s) if same(s.as_bytes(), app.session().as_bytes()) => Caller::Session,
        Some(_) => Caller::Wrong,
        None => Caller::Nobody,
    }
}

/// A browser request from this server's own pages: the browser says so
/// (`Sec-Fetch-Site`), or its `Origin` is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin";
    }
    match (get("origin"), get("host")) {
        (Some(o), Some(h)) => o
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == h),
        _ => false,
    }
}

/// What the web page's session may do on the API: follow the events and
/// start runs from its own pages.
pub(crate) fn session_may(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    match (method, path) {
        (&Method::GET, "/api/events") => true,
        (&Method::POST, "/api/runs") => same_origin(headers),
        _ => false,
    }
}

/// Pages without a session go to the login page, which says where the
/// token comes from; the page's own fetches get a 401 instead.
pub(super) async fn require(State(app): State<App>, req: Request, next: Next) -> Response {
    match caller(&app, req.headers()) {
        Caller::Token(_) | Caller::Session => next.run(req).await,
        _ if req
            .headers()
            .get("sec-fetch-mode")
            .is_some_and(|m| m != "navigate") =>
        {
            (StatusCode::UNAUTHORIZED, "signed out").into_response()
        }
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

/// One-time sign-in codes: what `beamflow ui` puts in its link instead of
/// the token (links end up in browser history and proxy logs).
#[derive(Clone, Default)]
pub(crate) struct Codes(Arc<Mutex<HashMap<String, Instant>>>);

impl Codes {
    fn issue(&self) -> String {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut m = self.0.lock().expect("codes lock");
        let now = Instant::now();
        m.retain(|_, born| now.duration_since(*born) < CODE_LIFE);
        m.insert(code.clone(), now);
        code
    }

    /// True once per issued code, within its life.
    fn redeem(&self, code: &str) -> bool {
        let mut m = self.0.lock().expect("codes lock");
        m.remove(code)
            .is_some_and(|born| born.elapsed() < CODE_LIFE)
    }
}

/// `POST /api/ui/code` (token only): a sign-in code for a link.
pub(crate) async fn issue_code(State(app): State<App>) -> Json<crate::api::UiCode> {
    Json(crate::api::UiCode {
        code: app.codes.issue(),
        expires_s: CODE_LIFE.as_secs(),
    })
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    code: Option<String>,
    next: Option<String>,
}

/// `GET /ui/login?code=C` (the link `beamflow ui` prints) signs in and
/// moves on; without a code it shows the form.
pub(super) async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    match q.code {
        Some(c) if app.codes.redeem(&c) => signed_in(&app, q.next.as_deref()),
        Some(_) => refused(
            q.next.as_deref(),
            "That sign-in link was used already or is over two minutes old: run `beamflow ui` again.",
        ),
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
    if app.role_of(f.token.trim()) == Some(Role::Admin) {
        signed_in(&app, f.next.as_deref())
    } else {
        refused(
            f.next.as_deref(),
            "That is not this server's token (BEAMFLOW_HOME/token on the server host).",
        )
    }
}

fn refused(next: Option<&str>, why: &str) -> Response {
    let mut r = render(
        "login.html",
        minijinja::context! { next => next, error => why },
    );
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r
}

fn signed_in(app: &App, next: Option<&str>) -> Response {
    // Only paths of this page: never an open redirect to another site.
    let to = next
        .filter(|n| n.starts_with("/ui/") && !n.starts_with("//"))
        .unwrap_or("/ui/runs");
    // Secure over TLS: cookies are not kept apart by port or scheme, and
    // the browser must not send this one to a plain-HTTP port on the host.
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        app.session(),
        if app.tls { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(to)).into_response()
}

pub(super) async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_work_once_and_sessions_hide_the_token() {
        let c = Codes::default();
        let code = c.issue();
        assert!(c.redeem(&code));
        assert!(!c.redeem(&code), "a code is good once");
        assert!(!c.redeem("made-up"));
        let s = session_key("secret-token");
        assert_eq!(s, session_key("secret-token"));
        assert_ne!(s, session_key("other-token"));
        assert!(!s.contains("secret"));
    }

    #[test]
    fn the_session_may_only_follow_events_and_start_runs_from_its_origin() {
        let mut h = HeaderMap::new();
        assert!(session_may(&Method::GET, "/api/events", &h));
        assert!(!session_may(&Method::GET, "/api/pilot", &h));
        assert!(!session_may(&Method::POST, "/api/runs/3/cancel", &h));
        assert!(
            !session_may(&Method::POST, "/api/runs", &h),
            "no origin said"
        );
        h.insert("host", "127.0.0.1:7878".parse().unwrap());
        h.insert("origin", "http://127.0.0.1:9999".parse().unwrap());
        assert!(!session_may(&Method::POST, "/api/runs", &h), "another port");
        h.insert("origin", "http://127.0.0.1:7878".parse().unwrap());
        assert!(session_may(&Method::POST, "/api/runs", &h));
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            !session_may(&Method::POST, "/api/runs", &h),
            "the browser knows better"
        );
    }
}
