//! The browser's side of the API token.
//!
//! The browser never holds the token itself: signing in (with a one-time
//! code from `beamflow ui`, or by pasting a token into the form) sets a
//! cookie holding a session key derived from the home token and the role
//! of the token that signed in — HttpOnly, so the page's script cannot read
//! it, and SameSite=Strict. A viewer's session watches; a submitter's or
//! the admin's may also start runs from the page. Cookies are not kept
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

/// The session key of a sign-in with a token of `role`, derived from the
/// home token: a keyed hash, so the cookie does not reveal the token, and
/// a rotation of the home token signs every browser out.
pub fn session_key(home_token: &str, role: Role) -> String {
    let key = blake3::hash(home_token.as_bytes());
    let what = format!("beamflow web session: {role}");
    blake3::keyed_hash(key.as_bytes(), what.as_bytes())
        .to_hex()
        .to_string()
}

/// The roles whose tokens may sign a browser in (a pilot's may not).
const SIGN_IN: [Role; 3] = [Role::Viewer, Role::Submitter, Role::Admin];

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
    /// The web page's cookie, of a sign-in with a token of this role.
    Session(Role),
    Nobody,
    /// Presented something, and it was wrong.
    Wrong,
}

pub(crate) fn caller(app: &App, headers: &HeaderMap) -> Caller {
    if let Some(t) = bearer(headers) {
        return app.role_of(t).map_or(Caller::Wrong, Caller::Token);
    }
    match cookie(headers) {
        Some(s) => SIGN_IN
            .into_iter()
            .find(|&r| same(s.as_bytes(), app.session(r).as_bytes()))
            .map_or(Caller::Wrong, Caller::Session),
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

/// What the web page's session may do on the API: follow the events and,
/// signed in with a token that may, start runs from its own pages.
pub(crate) fn session_may(role: Role, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    match (method, path) {
        (&Method::GET, "/api/events") => true,
        (&Method::POST, "/api/runs") => role.opens(Role::Submitter) && same_origin(headers),
        _ => false,
    }
}

/// Pages without a session go to the login page, which says where the
/// token comes from; the page's own fetches get a 401 instead.
pub(super) async fn require(State(app): State<App>, req: Request, next: Next) -> Response {
    match caller(&app, req.headers()) {
        Caller::Token(_) | Caller::Session(_) => next.run(req).await,
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
/// the token (links end up in browser history and proxy logs), each with
/// the role of the token that asked for it.
#[derive(Clone, Default)]
pub(crate) struct Codes(Arc<Mutex<HashMap<String, (Instant, Role)>>>);

impl Codes {
    fn issue(&self, role: Role) -> String {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut m = self.0.lock().expect("codes lock");
        let now = Instant::now();
        m.retain(|_, (born, _)| now.duration_since(*born) < CODE_LIFE);
        m.insert(code.clone(), (now, role));
        code
    }

    /// The code's role, once per issued code, within its life.
    fn redeem(&self, code: &str) -> Option<Role> {
        let mut m = self.0.lock().expect("codes lock");
        m.remove(code)
            .filter(|(born, _)| born.elapsed() < CODE_LIFE)
            .map(|(_, role)| role)
    }
}

/// `POST /api/ui/code` (a token, of any role but a pilot's): a sign-in
/// code for a link, which signs a browser in with that role.
pub(crate) async fn issue_code(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<crate::api::UiCode>, crate::server::core::ApiError> {
    let role = match caller(&app, &headers) {
        Caller::Token(r) if SIGN_IN.contains(&r) => r,
        _ => {
            return Err(crate::server::core::ApiError::new(
                403,
                "a sign-in code is for a viewer's, submitter's or the admin's token",
            ))
        }
    };
    Ok(Json(crate::api::UiCode {
        code: app.codes.issue(role),
        expires_s: CODE_LIFE.as_secs(),
    }))
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
        Some(c) => match app.codes.redeem(&c) {
            Some(role) => signed_in(&app, role, q.next.as_deref()),
            None => refused(
            q.next.as_deref(),
                "That sign-in link was used already or is over two minutes old: run `beamflow ui` again.",
            ),
        },
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
    match app.role_of(f.token.trim()) {
        Some(role) if SIGN_IN.contains(&role) => signed_in(&app, role, f.next.as_deref()),
        Some(_) => refused(
            f.next.as_deref(),
            "A pilot's token does not open the web page: use the home token (BEAMFLOW_HOME/token on the server host) or one from `beamflow token add`.",
        ),
        None => refused(
            f.next.as_deref(),
            "That is not one of this server's tokens (BEAMFLOW_HOME/token on the server host, or one from `beamflow token add`).",
        ),
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

fn signed_in(app: &App, role: Role, next: Option<&str>) -> Response {
    // Only paths of this page: never an open redirect to another site.
    let to = next
        .filter(|n| n.starts_with("/ui/") && !n.starts_with("//"))
        .unwrap_or("/ui/runs");
    // Secure over TLS: cookies are not kept apart by port or scheme, and
    // the browser must not send this one to a plain-HTTP port on the host.
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        app.session(role),
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
        let code = c.issue(Role::Viewer);
        assert_eq!(c.redeem(&code), Some(Role::Viewer));
        assert_eq!(c.redeem(&code), None, "a code is good once");
        assert_eq!(c.redeem("made-up"), None);
        let s = session_key("secret-token", Role::Admin);
        assert_eq!(s, session_key("secret-token", Role::Admin));
        assert_ne!(s, session_key("other-token", Role::Admin));
        assert_ne!(s, session_key("secret-token", Role::Viewer));
        assert!(!s.contains("secret"));
    }

    #[test]
    fn the_session_may_only_follow_events_and_start_runs_from_its_origin() {
        let a = Role::Admin;
        let mut h = HeaderMap::new();
        assert!(session_may(a, &Method::GET, "/api/events", &h));
        assert!(!session_may(a, &Method::GET, "/api/pilot", &h));
        assert!(!session_may(a, &Method::POST, "/api/runs/3/cancel", &h));
        assert!(
            !session_may(a, &Method::POST, "/api/runs", &h),
            "no origin said"
        );
        h.insert("host", "127.0.0.1:7878".parse().unwrap());
        h.insert("origin", "http://127.0.0.1:9999".parse().unwrap());
        assert!(
            !session_may(a, &Method::POST, "/api/runs", &h),
            "another port"
        );
        h.insert("origin", "http://127.0.0.1:7878".parse().unwrap());
        assert!(session_may(a, &Method::POST, "/api/runs", &h));
        assert!(session_may(Role::Submitter, &Method::POST, "/api/runs", &h));
        assert!(
            !session_may(Role::Viewer, &Method::POST, "/api/runs", &h),
            "a viewer watches"
        );
        assert!(session_may(Role::Viewer, &Method::GET, "/api/events", &h));
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            !session_may(a, &Method::POST, "/api/runs", &h),
            "the browser knows better"
        );
    }
}
