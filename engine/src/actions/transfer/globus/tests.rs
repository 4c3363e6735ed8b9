//! The Globus backend against a loopback HTTP server that answers with the
//! replies in tests/data/globus, in the order each test scripts them, and
//! records every request it is sent.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode as HttpStatus, Uri};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::site::{Remote, RemoteBackend, TransferPolicy};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/globus/");
const NEAR: &str = "6f1c1a52-1b2d-4c3e-9f4a-0a1b2c3d4e5f";
const FAR: &str = "0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f";
const TASK: &str = "a1c2e3f4-5f0a-11ef-8a3b-0242ac110002";
const SUBMISSION: &str = "9b3f5c1e-5f0a-11ef-8a3b-0242ac110002";
const TOKEN: &str = "AgXb7tokenNeverShown42";

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DATA}{name}.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    /// `METHOD /path` (no query).
    call: String,
    query: String,
    authorization: String,
    body: Value,
}

/// A reply: status, fixture, Retry-After seconds.
type Reply = (u16, Value, Option<u64>);

#[derive(Default)]
struct Script {
    replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// Replies for a call whose queue ran dry: the last one again.
    last: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<Seen>>,
}

async fn answer(
    State(s): State<Arc<Script>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = format!("{method} {}", uri.path());
    s.seen.lock().unwrap().push(Seen {
        call: call.clone(),
        query: uri.query().unwrap_or("").to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let next = s
        .replies
        .lock()
        .unwrap()
        .get_mut(&call)
        .and_then(VecDeque::pop_front);
    let reply = match next {
        Some(r) => {
            s.last.lock().unwrap().insert(call, r.clone());
            r
        }
        None => match s.last.lock().unwrap().get(&call) {
            Some(r) => r.clone(),
            None => (
                404,
                json!({"code": "ClientError.NotFound", "message": format!("unscripted: {call}")}),
                None,
            ),
        },
    };
    let (status, value, wait) = reply;
    let mut resp = (
        HttpStatus::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response();
    if let Some(w) = wait {
        resp.headers_mut()
            .insert("retry-after", w.to_string().parse().unwrap());
    }
    resp
}

/// The mock Transfer API, a token file and a site policy whose remote
/// `aps` points at both.
struct Mock {
    script: Arc<Script>,
    url: String,
    dir: tempfile::TempDir,
}

impl Mock {
    async fn start() -> Mock {
        let script = Arc::new(Script::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v0.10", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("globus-token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        Mock { script, url, dir }
    }

    /// Queues replies for `call` (`METHOD /v0.10/path`).
    fn on(&self, call: &str, replies: &[(u16, &str)]) {
        let mut r = self.script.replies.lock().unwrap();
        let q = r.entry(call.replace(' ', " /v0.10")).or_default();
        for (status, name) in replies {
            q.push_back((*status, fixture(name), None));
        }
    }

    fn on_wait(&self, call: &str, status: u16, name: &str, retry_after: u64) {
        let mut r = self.script.replies.lock().unwrap();
        r.entry(call.replace(' ', " /v0.10"))
            .or_default()
            .push_back((status, fixture(name), Some(retry_after)));
    }

    fn seen(&self, call: &str) -> Vec<Seen> {
        let call = call.replace(' ', " /v0.10");
        self.script
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.call == call)
            .cloned()
            .collect()
    }

    /// The local directory this site's collection is rooted at.
    fn root(&self) -> PathBuf {
        self.dir.path().join("collection")
    }

    fn remote(&self) -> Remote {
        Remote {
            backend: RemoteBackend::Globus,
            endpoint: Some(FAR.into()),
            local_endpoint: Some(NEAR.into()),
            local_collection_root: Some(self.root().display().to_string()),
            token_file: Some(self.dir.path().join("globus-token").display().to_string()),
            api_url: Some(self.url.clone()),
            roots: vec!["/gdata/8idi".into()],
            ..Remote::default()
        }
    }

    /// Pushes the file `x.h5` of the collection root (written here) to
    /// the beamline, as `verify`s default does.
    async fn push_x(&self) -> Result<Value, Failure> {
        write(&self.root().join("x.h5"), b"x");
        self.job(
            &[self.root().join("x.h5").display().to_string()],
            "aps:/gdata/8idi/",
        )
        .globus_paced(true, &[], &Cancel::default(), fast())
        .await
    }

    fn job(&self, srcs: &[String], dst: &str) -> Job {
        let mut p = TransferPolicy::default();
        p.remotes.insert("aps".into(), self.remote());
        Job::plan(srcs, dst, &p).unwrap().expect("a remote job")
    }
}

fn fast() -> Pace {
    Pace {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
        retries: 3,
    }
}

fn error(r: Result<Value, Failure>) -> String {
    match r {
        Err(Failure::Failed { error, .. }) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn write(p: &Path, content: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A push of a directory and a file is one task: the submission id asked
/// for first, the body as Globus wants it (collection paths, recursive for
/// the directory, checksum sync and verification), the token as a Bearer
/// header, the task polled until it succeeded, and the files it moved read
/// from every page of successful_transfers.
#[tokio::test]
async fn a_push_is_one_task_followed_until_it_succeeded() {
    let m = Mock::start().await;
    write(&m.root().join("run1/a.bin"), &[7u8; 1000]);
    write(&m.root().join("run1/sub/b.bin"), b"hello");
    write(&m.root().join("c.h5"), b"hdf");
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(202, "transfer_accepted")]);
    m.on(
        &format!("GET /task/{TASK}"),
        &[
            (200, "task_active"),
            (200, "task_active_faults"),
            (200, "task_succeeded"),
        ],
    );
    m.on(
        &format!("GET /task/{TASK}/successful_transfers"),
        &[
            (200, "successful_transfers_1"),
            (200, "successful_transfers_2"),
        ],
    );
    let srcs = vec![
        m.root().join("run1").display().to_string(),
        m.root().join("c.h5").display().to_string(),
    ];
    let out = m
        .job(&srcs, "aps:/gdata/8idi/in/")
        .globus_paced(true, &[m.root()], &Cancel::default(), fast())
        .await
        .unwrap();

    let posts = m.seen("POST /transfer");
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].body,
        json!({
            "DATA_TYPE": "transfer",
            "submission_id": SUBMISSION,
            "source_endpoint": NEAR,
            "destination_endpoint": FAR,
            "label": "beamflow to aps",
            "sync_level": 3,
            "verify_checksum": true,
            "preserve_timestamp": true,
            "encrypt_data": true,
            "fail_on_quota_errors": true,
            "notify_on_succeeded": false,
            "notify_on_failed": false,
            "notify_on_inactive": false,
            "DATA": [
                {"DATA_TYPE": "transfer_item", "source_path": "/run1/",
                 "destination_path": "/gdata/8idi/in/run1/", "recursive": true},
                {"DATA_TYPE": "transfer_item", "source_path": "/c.h5",
                 "destination_path": "/gdata/8idi/in/c.h5", "recursive": false},
            ],
        })
    );
    assert_eq!(posts[0].authorization, format!("Bearer {TOKEN}"));
    assert_eq!(m.seen(&format!("GET /task/{TASK}")).len(), 3);
    let pages = m.seen(&format!("GET /task/{TASK}/successful_transfers"));
    assert_eq!(
        pages.iter().map(|p| p.query.as_str()).collect::<Vec<_>>(),
        ["limit=1000", "limit=1000&marker=1"]
    );
    assert_eq!(out["task_id"], TASK);
    assert_eq!(out["backend"], "globus");
    assert_eq!(out["direction"], "push");
    assert_eq!(out["dst"], "aps:/gdata/8idi/in/");
    assert_eq!(
        out["files"],
        json!(["aps:/gdata/8idi/in/run1/a.bin", "aps:/gdata/8idi/in/c.h5"])
    );
    assert_eq!(
        (
            &out["bytes"],
            &out["copied"],
            &out["skipped"],
            &out["bytes_checksummed"],
            &out["faults"]
        ),
        (&json!(1005), &json!(2), &json!(1), &json!(2010), &json!(2))
    );
}

/// A submission whose reply is lost (503) is sent again with the same
/// submission id; Globus answers `Duplicate` with the task it made, which
/// is the one followed: no second task.
#[tokio::test]
async fn a_lost_submission_is_sent_again_with_the_same_submission_id() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on(
        "POST /transfer",
        &[(503, "error_unavailable"), (200, "transfer_duplicate")],
    );
    m.on(&format!("GET /task/{TASK}"), &[(200, "task_succeeded")]);
    m.on(
        &format!("GET /task/{TASK}/successful_transfers"),
        &[(200, "successful_transfers_2")],
    );
    let out = m
        .job(
            &[m.root().join("x.h5").display().to_string()],
            "aps:/gdata/8idi/x.h5",
        )
        .globus_paced(false, &[], &Cancel::default(), fast())
        .await
        .unwrap();
    let posts = m.seen("POST /transfer");
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].body["submission_id"], SUBMISSION);
    assert_eq!(posts[1].body, posts[0].body);
    // Without verification: by modification time, no checksums.
    assert_eq!(
        (
            &posts[0].body["sync_level"],
            &posts[0].body["verify_checksum"]
        ),
        (&json!(2), &json!(false))
    );
    assert_eq!(
        posts[0].body["DATA"][0]["destination_path"],
        "/gdata/8idi/x.h5"
    );
    assert_eq!(m.seen("GET /submission_id").len(), 1);
    assert_eq!(out["task_id"], TASK);
}

/// A pull that Globus fails: the error names the task, the remote,
/// Globus's reason and its last error event; the pull's body goes far →
/// near with the local destination as the collection names it.
#[tokio::test]
async fn a_failed_task_names_globus_reason_and_its_last_error() {
    let m = Mock::start().await;
    std::fs::create_dir_all(m.root().join("stage")).unwrap();
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(202, "transfer_accepted")]);
    m.on(
        &format!("GET /task/{TASK}"),
        &[(200, "task_active"), (200, "task_failed")],
    );
    m.on(
        &format!("GET /task/{TASK}/event_list"),
        &[(200, "event_list_errors")],
    );
    let dst = format!("{}/", m.root().join("stage").display());
    let e = error(
        m.job(&["aps:/gdata/8idi/r.h5".into()], &dst)
            .globus_paced(true, &[], &Cancel::default(), fast())
            .await,
    );
    assert!(
        e.contains(&format!(
            "Globus task {TASK} with remote `aps` failed: Permission denied on the destination path (0 of 1 files moved, 5 faults); last error: PERMISSION_DENIED: permission denied (Error (transfer))"
        )),
        "{e}"
    );
    let body = &m.seen("POST /transfer")[0].body;
    assert_eq!(
        (&body["source_endpoint"], &body["destination_endpoint"]),
        (&json!(FAR), &json!(NEAR))
    );
    assert_eq!(body["label"], "beamflow from aps");
    assert_eq!(
        (
            &body["DATA"][0]["source_path"],
            &body["DATA"][0]["destination_path"]
        ),
        (&json!("/gdata/8idi/r.h5"), &json!("/stage/r.h5"))
    );
    assert_eq!(
        m.seen(&format!("GET /task/{TASK}/event_list"))[0].query,
        "filter=is_error:1&limit=10"
    );
}

/// A pull that succeeds reports its files as local paths.
#[tokio::test]
async fn a_pull_reports_local_paths() {
    let m = Mock::start().await;
    std::fs::create_dir_all(m.root().join("stage")).unwrap();
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(202, "transfer_accepted")]);
    m.on(&format!("GET /task/{TASK}"), &[(200, "task_succeeded")]);
    m.on(
        &format!("GET /task/{TASK}/successful_transfers"),
        &[(200, "successful_transfers_pull")],
    );
    let dst = m.root().join("stage").display().to_string();
    let out = m
        .job(&["aps:/gdata/8idi/r.h5".into()], &dst)
        .globus_paced(true, &[m.root()], &Cancel::default(), fast())
        .await
        .unwrap();
    assert_eq!(
        out["files"],
        json!([m.root().join("stage/r.h5").display().to_string()])
    );
    assert_eq!(
        (&out["direction"], &out["dst"]),
        (&json!("pull"), &json!(dst))
    );
}

/// A task that needs a person (INACTIVE) is cancelled at Globus and fails
/// the step saying why.
#[tokio::test]
async fn a_task_that_needs_a_person_is_cancelled_and_fails_saying_why() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(202, "transfer_accepted")]);
    m.on(&format!("GET /task/{TASK}"), &[(200, "task_inactive")]);
    m.on(
        &format!("POST /task/{TASK}/cancel"),
        &[(200, "cancel_accepted")],
    );
    m.on(
        &format!("GET /task/{TASK}/event_list"),
        &[(200, "event_list_errors")],
    );
    let e = error(m.push_x().await);
    assert!(e.contains("stopped (CREDENTIAL_EXPIRED)"), "{e}");
    assert!(e.contains("cancelled, so a retry starts afresh"), "{e}");
    assert_eq!(m.seen(&format!("POST /task/{TASK}/cancel")).len(), 1);
}

/// A cancelled step cancels its task at Globus.
#[tokio::test]
async fn a_cancelled_step_cancels_its_task() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(202, "transfer_accepted")]);
    // ACTIVE for as long as it is asked.
    m.on(&format!("GET /task/{TASK}"), &[(200, "task_active")]);
    m.on(
        &format!("POST /task/{TASK}/cancel"),
        &[(200, "cancel_accepted")],
    );
    let job = m.job(
        &[m.root().join("x.h5").display().to_string()],
        "aps:/gdata/8idi/",
    );
    let cancel = Cancel::default();
    let stop = cancel.clone();
    let seen = m.script.clone();
    tokio::spawn(async move {
        // Cancel once the task has been polled a few times.
        loop {
            let polls = seen
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.call.starts_with("GET /v0.10/task/"))
                .count();
            if polls >= 3 {
                stop.cancel();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let r = job.globus_paced(true, &[], &cancel, fast()).await;
    assert!(matches!(r, Err(Failure::Cancelled)), "{r:?}");
    assert_eq!(m.seen(&format!("POST /task/{TASK}/cancel")).len(), 1);
}

/// A refused token fails at once (no retry), naming the token's file and
/// never its content.
#[tokio::test]
async fn a_refused_token_is_named_by_its_file_never_by_its_content() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on("GET /submission_id", &[(401, "error_authentication")]);
    let e = error(m.push_x().await);
    assert!(
        e.contains("Globus Transfer (remote `aps`): GET /submission_id: 401 AuthenticationFailed: Token is not active (request Zp3kLm9Qa)"),
        "{e}"
    );
    assert!(e.contains("globus-token was refused"), "{e}");
    assert!(!e.contains(TOKEN), "the token leaked into the error: {e}");
    assert_eq!(m.seen("GET /submission_id").len(), 1);
    assert!(m.seen("POST /transfer").is_empty());
}

/// A rate limit is waited out as Retry-After says and the call tried
/// again; an error of the far side (ExternalError, as a 502) is not tried
/// again, and names Globus's code and message.
#[tokio::test]
async fn passing_errors_are_tried_again_far_side_errors_are_not() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on_wait("GET /submission_id", 429, "error_rate_limit", 0);
    m.on("GET /submission_id", &[(200, "submission_id")]);
    m.on("POST /transfer", &[(502, "error_external")]);
    let e = error(m.push_x().await);
    assert_eq!(m.seen("GET /submission_id").len(), 2);
    assert_eq!(m.seen("POST /transfer").len(), 1);
    assert!(
        e.contains("POST /transfer: 502 ExternalError.DirListingFailed.GCDisconnected: The Globus Connect Personal endpoint 'APS 8-ID-I'"),
        "{e}"
    );
    // An outage that outlasts the retries says how often it was tried.
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    m.on("GET /submission_id", &[(503, "error_unavailable")]);
    let e = error(m.push_x().await);
    assert!(e.contains("503 ServiceUnavailable"), "{e}");
    assert!(e.ends_with("4 tries"), "{e}");
    assert_eq!(m.seen("GET /submission_id").len(), 4);
}

/// Refused before any call: a token file others can read, a path outside
/// the local collection, a far path outside the remote's roots, an
/// unreachable API.
#[tokio::test]
async fn bad_set_ups_are_refused_naming_what_is_wrong() {
    let m = Mock::start().await;
    write(&m.root().join("x.h5"), b"x");
    let src = m.root().join("x.h5").display().to_string();
    let token = m.dir.path().join("globus-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = error(
        m.job(std::slice::from_ref(&src), "aps:/gdata/8idi/")
            .globus_paced(true, &[], &Cancel::default(), fast())
            .await,
    );
    assert!(
        e.contains("globus-token: the Globus token of remote `aps` is readable by others (mode 644): chmod 600 it"),
        "{e}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    let outside = m.dir.path().join("elsewhere.h5");
    write(&outside, b"y");
    let e = error(
        m.job(&[outside.display().to_string()], "aps:/gdata/8idi/")
            .globus_paced(true, &[], &Cancel::default(), fast())
            .await,
    );
    assert!(
        e.contains("elsewhere.h5: outside this site's Globus collection, which is rooted at")
            && e.contains("(transfer.remotes.aps.local_collection_root)"),
        "{e}"
    );
    let e = error(
        m.job(std::slice::from_ref(&src), "aps:/etc/")
            .globus_paced(true, &[], &Cancel::default(), fast())
            .await,
    );
    assert!(
        e.contains("aps:/etc/: destination is outside remote `aps`'s allowed roots"),
        "{e}"
    );
    assert!(m.script.seen.lock().unwrap().is_empty(), "nothing was sent");

    let mut p = TransferPolicy::default();
    let mut r = m.remote();
    r.api_url = Some("http://127.0.0.1:1/v0.10".into());
    p.remotes.insert("aps".into(), r);
    let e = error(
        Job::plan(std::slice::from_ref(&src), "aps:/gdata/8idi/", &p)
            .unwrap()
            .unwrap()
            .globus_paced(true, &[], &Cancel::default(), fast())
            .await,
    );
    assert!(
        e.contains("GET /submission_id: cannot reach http://127.0.0.1:1/v0.10")
            && e.contains("4 tries"),
        "{e}"
    );
}

/// The real Transfer API, when `BEAMFLOW_GLOBUS_TOKEN` (an access token
/// with the transfer scope) and two collection ids are set:
/// `BEAMFLOW_GLOBUS_SRC` (read: `BEAMFLOW_GLOBUS_SRC_PATH`, default
/// `/share/godata/file1.txt` as on Globus's tutorial collections) and
/// `BEAMFLOW_GLOBUS_DST` (this site's collection, written under
/// `BEAMFLOW_GLOBUS_DST_PATH`, default `/~/`). Skipped otherwise.
#[tokio::test]
async fn live_transfer_through_globus_when_a_token_and_collections_are_set() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(token), Some(src), Some(dst)) = (
        var("BEAMFLOW_GLOBUS_TOKEN"),
        var("BEAMFLOW_GLOBUS_SRC"),
        var("BEAMFLOW_GLOBUS_DST"),
    ) else {
        eprintln!(
            "skipped: the live Globus test needs BEAMFLOW_GLOBUS_TOKEN, BEAMFLOW_GLOBUS_SRC and \
             BEAMFLOW_GLOBUS_DST (two collection ids)"
        );
        return;
    };
    let src_path =
        var("BEAMFLOW_GLOBUS_SRC_PATH").unwrap_or_else(|| "/share/godata/file1.txt".into());
    let dst_path = var("BEAMFLOW_GLOBUS_DST_PATH").unwrap_or_else(|| "/~/".into());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut p = TransferPolicy::default();
    p.remotes.insert(
        "live".into(),
        Remote {
            backend: RemoteBackend::Globus,
            endpoint: Some(src),
            local_endpoint: Some(dst),
            token_file: Some(token_file.display().to_string()),
            ..Remote::default()
        },
    );
    let job = Job::plan(&[format!("live:{src_path}")], &dst_path, &p)
        .unwrap()
        .unwrap();
    let out = job
        .globus(true, &[], &Cancel::default())
        .await
        .unwrap_or_else(|e| panic!("live Globus transfer: {e:?}"));
    eprintln!("live Globus transfer: {out}");
    assert_eq!(out["backend"], "globus");
    assert!(out["copied"].as_u64().unwrap() + out["skipped"].as_u64().unwrap() >= 1);
}
