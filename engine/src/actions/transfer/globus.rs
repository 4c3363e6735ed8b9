//! `transfer` to or from another facility through Globus Transfer (REST API
//! v0.10), where the far end is a Globus collection — the way most data
//! leaves a light source for a computing facility.
//!
//! One step is one Globus task: a submission id is fetched first and reused
//! when a submission must be sent again (a lost reply, a 5xx), so a retry
//! never starts a second task; the task is submitted with a sync level
//! (checksum when the step verifies, as the other backends decide by
//! content) and checksum verification, then followed until Globus says it
//! succeeded or failed. A cancelled step cancels its task; a task that
//! needs a person (Globus says INACTIVE: expired credentials, a consent to
//! renew) is cancelled too and fails the step with Globus's reason, so
//! nothing moves behind the run's back. The access token comes from the
//! file the site config names, read when the step starts; it is sent only
//! to the Transfer API and never appears in an error, a log or the store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::far::{Direction, Job};
use crate::actions::{Cancel, Failure};
use crate::home::expand_home;

/// The Transfer API every Globus collection is reached through.
pub const DEFAULT_API: &str = "https://transfer.api.globus.org/v0.10";

/// How often the API is asked: a task is polled first after `first`, the
/// interval doubling to `max` (Globus asks clients not to poll faster than
/// once a second); a call that fails for a passing reason (network, 429,
/// 5xx) is tried `retries` more times, waiting as Retry-After says.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    first: Duration,
    max: Duration,
    retries: u32,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            first: Duration::from_secs(1),
            max: Duration::from_secs(10),
            retries: 6,
        }
    }
}

impl Job {
    /// Checks every path at both ends, then submits one Globus task and
    /// follows it to the end or until `cancel`.
    pub(super) async fn globus(
        &self,
        verify: bool,
        roots: &[PathBuf],
        cancel: &Cancel,
    ) -> Result<Value, Failure> {
        self.globus_paced(verify, roots, cancel, Pace::default())
            .await
    }

    async fn globus_paced(
        &self,
        verify: bool,
        roots: &[PathBuf],
        cancel: &Cancel,
        pace: Pace,
    ) -> Result<Value, Failure> {
        self.check(roots)?;
        let items = self.items()?;
        let api = Api::new(self, pace)?;
        let started = Instant::now();
        let submission = api.call(Method::GET, "/submission_id", None).await?;
        let Some(submission_id) = submission["value"].as_str() else {
            return Err(api.unexpected("GET /submission_id", &submission));
        };
        let (source, destination) = match self.direction {
            Direction::Push => (&api.near, &api.far),
            Direction::Pull => (&api.far, &api.near),
        };
        let body = json!({
            "DATA_TYPE": "transfer",
            "submission_id": submission_id,
            "source_endpoint": source,
            "destination_endpoint": destination,
            "label": format!("beamflow {} {}", match self.direction {
                Direction::Push => "to",
                Direction::Pull => "from",
            }, self.name),
            // 3: by checksum, as the other backends decide what is there;
            // 2: by modification time, as rsync's quick check does.
            "sync_level": if verify { 3 } else { 2 },
            "verify_checksum": verify,
            "preserve_timestamp": true,
            "encrypt_data": true,
            "fail_on_quota_errors": true,
            "notify_on_succeeded": false,
            "notify_on_failed": false,
            "notify_on_inactive": false,
            "DATA": items.iter().map(|i| json!({
                "DATA_TYPE": "transfer_item",
                "source_path": i.source,
                "destination_path": i.destination,
                "recursive": i.recursive,
            })).collect::<Vec<_>>(),
        });
        // A reply lost after Globus accepted the task makes the retry a
        // `Duplicate`, which names the task already made.
        let submitted = api.call(Method::POST, "/transfer", Some(&body)).await?;
        let Some(task_id) = submitted["task_id"].as_str().map(String::from) else {
            return Err(api.unexpected("POST /transfer", &submitted));
        };
        let task = api.follow(&task_id, cancel).await?;
        let files = api.moved_files(&task_id, self).await?;
        let n = |k: &str| task[k].as_u64().unwrap_or(0);
        Ok(json!({
            "dst": self.shown_dst(),
            "files": files,
            "bytes": n("bytes_transferred"),
            "copied": n("files_transferred"),
            "skipped": n("files_skipped"),
            "backend": "globus",
            "remote": self.name,
            "direction": self.direction_name(),
            "task_id": task_id,
            "bytes_checksummed": n("bytes_checksummed"),
            "faults": n("faults"),
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    /// The task's items, with local paths as this site's collection sees
    /// them. A directory goes recursively: a local one is known by looking,
    /// a far one by its trailing `/` (the far end cannot be looked at
    /// before the task runs).
    fn items(&self) -> Result<Vec<Item>, Failure> {
        // Into a directory when it says so; a local one may also be seen.
        let into_dir = self.srcs.len() > 1
            || self.dst.ends_with('/')
            || (self.direction == Direction::Pull && Path::new(&self.dst).is_dir());
        let mut items = Vec::new();
        for src in &self.srcs {
            let recursive = match self.direction {
                Direction::Push => Path::new(src).is_dir(),
                Direction::Pull => src.ends_with('/'),
            };
            let name = Path::new(src.trim_end_matches('/'))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dst = if into_dir {
                format!("{}/{name}", self.dst.trim_end_matches('/'))
            } else {
                self.dst.clone()
            };
            let slash = if recursive { "/" } else { "" };
            let (source, destination) = match self.direction {
                Direction::Push => (self.collection_path(src)?, dst),
                Direction::Pull => (
                    src.trim_end_matches('/').to_string(),
                    self.collection_path(&dst)?,
                ),
            };
            items.push(Item {
                source: format!("{}{slash}", source.trim_end_matches('/')),
                destination: format!("{}{slash}", destination.trim_end_matches('/')),
                recursive,
            });
        }
        Ok(items)
    }

    /// A local path as this site's collection names it: relative to
    /// `local_collection_root`, which it must lie under.
    fn collection_path(&self, local: &str) -> Result<String, Failure> {
        let root = self.remote.local_collection_root.as_deref().unwrap_or("/");
        let p = Path::new(local);
        if !p.is_absolute() {
            return Err(Failure::msg(format!(
                "{local}: a path moved by Globus must be absolute"
            )));
        }
        let rest = p.strip_prefix(root).map_err(|_| {
            Failure::msg(format!(
                "{local}: outside this site's Globus collection, which is rooted at {root} \
                 (transfer.remotes.{}.local_collection_root)",
                self.name
            ))
        })?;
        Ok(format!("/{}", rest.display()))
    }

    /// A path this site's collection names, as a local path.
    fn local_path(&self, collection: &str) -> String {
        let root = self.remote.local_collection_root.as_deref().unwrap_or("/");
        Path::new(root)
            .join(collection.trim_start_matches('/'))
            .display()
            .to_string()
    }
}

/// One `transfer_item` of a task.
#[derive(Debug, PartialEq)]
struct Item {
    source: String,
    destination: String,
    recursive: bool,
}

/// The Transfer API as one remote uses it.
struct Api {
    base: String,
    token: String,
    token_file: String,
    remote: String,
    /// This site's collection id and the far end's.
    near: String,
    far: String,
    http: reqwest::Client,
    pace: Pace,
}

/// Why a call failed: worth trying again (after `wait` when the API said
/// how long), or not.
enum CallError {
    Passing { why: String, wait: Option<Duration> },
    Final(Failure),
}

impl Api {
    fn new(job: &Job, pace: Pace) -> Result<Api, Failure> {
        let r = &job.remote;
        let missing = |k: &str| {
            Failure::msg(format!(
                "transfer.remotes.{}.{k} is required for backend = \"globus\"",
                job.name
            ))
        };
        let token_file = r.token_file.clone().ok_or_else(|| missing("token_file"))?;
        let token = read_token(&expand_home(&token_file), &job.name)?;
        let base = r
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API)
            .trim_end_matches('/')
            .to_string();
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("beamflow/", env!("CARGO_PKG_VERSION")));
        if base.starts_with("https:") {
            for cert in system_roots()? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| Failure::msg(format!("Globus Transfer client: {e}")))?;
        Ok(Api {
            base,
            token,
            token_file,
            remote: job.name.clone(),
            near: r
                .local_endpoint
                .clone()
                .ok_or_else(|| missing("local_endpoint"))?,
            far: r.endpoint.clone().ok_or_else(|| missing("endpoint"))?,
            http,
            pace,
        })
    }

    /// One API call, tried again while it fails for a passing reason.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut tries = 0;
        loop {
            match self.once(method.clone(), path, body).await {
                Ok(v) => return Ok(v),
                Err(CallError::Final(f)) => return Err(f),
                Err(CallError::Passing { why, wait }) => {
                    if tries >= self.pace.retries {
                        return Err(Failure::msg(format!(
                            "Globus Transfer (remote `{}`): {what}: {why}, {} tries",
                            self.remote,
                            tries + 1
                        )));
                    }
                    let wait = wait.unwrap_or_else(|| {
                        (self.pace.first * 2u32.saturating_pow(tries)).min(self.pace.max)
                    });
                    tracing::warn!(remote = %self.remote, "Globus Transfer: {what}: {why}; again in {wait:?}");
                    tokio::time::sleep(wait).await;
                    tries += 1;
                }
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // The token is in a header, never in reqwest's error text.
            Err(e) => {
                return Err(CallError::Passing {
                    why: format!("cannot reach {}: {}", self.base, crate::tls::root_cause(&e)),
                    wait: None,
                })
            }
        };
        let status = resp.status();
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.map_err(|e| CallError::Passing {
            why: format!("reply cut off: {e}"),
            wait: None,
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            if value.is_null() {
                return Err(CallError::Final(Failure::msg(format!(
                    "Globus Transfer (remote `{}`): {what}: the reply is not JSON: {}",
                    self.remote,
                    text.chars().take(200).collect::<String>()
                ))));
            }
            return Ok(value);
        }
        let code = value["code"].as_str().unwrap_or("");
        let message = value["message"].as_str().unwrap_or(text.trim());
        let request = value["request_id"]
            .as_str()
            .map(|r| format!(" (request {r})"))
            .unwrap_or_default();
        let said = format!("{} {code}: {message}{request}", status.as_u16());
        // Errors the far side reports (an endpoint down, a storage error)
        // come as 5xx too, but trying again at once does not mend them.
        let far_side = code.contains("ExternalError") || code.contains("EndpointError");
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && !far_side {
            return Err(CallError::Passing {
                why: said,
                wait: wait.map(Duration::from_secs),
            });
        }
        let hint = if status == StatusCode::UNAUTHORIZED || code.contains("AuthenticationFailed") {
            format!(
                "; the token in {} was refused (expired, revoked or without the transfer scope): write a fresh one there",
                self.token_file
            )
        } else if status == StatusCode::FORBIDDEN {
            " (the token's identity lacks permission on a collection or path)".to_string()
        } else {
            String::new()
        };
        Err(CallError::Final(Failure::msg(format!(
            "Globus Transfer (remote `{}`): {what}: {said}{hint}",
            self.remote
        ))))
    }

    fn unexpected(&self, what: &str, v: &Value) -> Failure {
        Failure::msg(format!(
            "Globus Transfer (remote `{}`): {what}: unexpected reply {}",
            self.remote,
            v.to_string().chars().take(300).collect::<String>()
        ))
    }

    /// Polls the task until it ends; on `cancel` it is cancelled at Globus.
    async fn follow(&self, task_id: &str, cancel: &Cancel) -> Result<Value, Failure> {
        let mut wait = self.pace.first;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.cancel(task_id).await;
                    return Err(Failure::Cancelled);
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.pace.max);
            let task = self
                .call(Method::GET, &format!("/task/{task_id}"), None)
                .await?;
            match task["status"].as_str().unwrap_or("") {
                "SUCCEEDED" => return Ok(task),
                "ACTIVE" => continue,
                "FAILED" => {
                    let reason = task["fatal_error"]["description"]
                        .as_str()
                        .or(task["nice_status"].as_str())
                        .unwrap_or("no reason given");
                    return Err(self
                        .ended(task_id, &task, &format!("failed: {reason}"))
                        .await);
                }
                "INACTIVE" => {
                    self.cancel(task_id).await;
                    let why = task["nice_status"].as_str().unwrap_or("needs attention");
                    return Err(self
                        .ended(
                            task_id,
                            &task,
                            &format!(
                                "stopped ({why}): it needs a person at the Globus web app (credentials \
                                 or a consent to renew); cancelled, so a retry starts afresh"
                            ),
                        )
                        .await);
                }
                other => {
                    return Err(
                        self.unexpected(&format!("GET /task/{task_id} (status `{other}`)"), &task)
                    )
                }
            }
        }
    }

    /// The failure of a task that ended badly, with its last error event.
    async fn ended(&self, task_id: &str, task: &Value, what: &str) -> Failure {
        let events = self
            .call(
                Method::GET,
                &format!("/task/{task_id}/event_list?filter=is_error:1&limit=10"),
                None,
            )
            .await
            .ok();
        let last = events
            .as_ref()
            .and_then(|e| e["DATA"].as_array())
            .and_then(|d| d.first())
            .map(|e| {
                let details = e["details"].as_str().unwrap_or("").trim();
                format!(
                    "; last error: {}: {}{}",
                    e["code"].as_str().unwrap_or("?"),
                    e["description"].as_str().unwrap_or(""),
                    if details.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", details.lines().next().unwrap_or(details))
                    }
                )
            })
            .unwrap_or_default();
        let n = |k: &str| task[k].as_u64().unwrap_or(0);
        Failure::msg(format!(
            "Globus task {task_id} with remote `{}` {what} ({} of {} files moved, {} faults){last}",
            self.remote,
            n("files_transferred"),
            n("files"),
            n("faults"),
        ))
    }

    /// Asks Globus to cancel the task; a task already ended is fine.
    async fn cancel(&self, task_id: &str) {
        if let Err(Failure::Failed { error, .. }) = self
            .call(
                Method::POST,
                &format!("/task/{task_id}/cancel"),
                Some(&json!({})),
            )
            .await
        {
            tracing::warn!(remote = %self.remote, "cancelling Globus task {task_id}: {error}");
        }
    }

    /// The files the task moved, as the step's `files` (a pull's as local
    /// paths, a push's as `REMOTE:/path`), all pages.
    async fn moved_files(&self, task_id: &str, job: &Job) -> Result<Vec<String>, Failure> {
        let mut files = Vec::new();
        let mut marker: Option<u64> = None;
        loop {
            let page = self
                .call(
                    Method::GET,
                    &format!(
                        "/task/{task_id}/successful_transfers?limit=1000{}",
                        marker.map(|m| format!("&marker={m}")).unwrap_or_default()
                    ),
                    None,
                )
                .await?;
            for t in page["DATA"].as_array().into_iter().flatten() {
                let Some(d) = t["destination_path"].as_str() else {
                    continue;
                };
                files.push(match job.direction {
                    Direction::Push => format!("{}:{d}", job.name),
                    Direction::Pull => job.local_path(d),
                });
            }
            match page["next_marker"].as_u64() {
                Some(m) if Some(m) != marker => marker = Some(m),
                _ => return Ok(files),
            }
        }
    }
}

/// The token in `path`: one line, readable by its owner alone (as ssh
/// insists of a private key).
fn read_token(path: &Path, remote: &str) -> Result<String, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Failure::msg(format!(
            "{}: cannot read the Globus token of remote `{remote}`: {e}",
            path.display()
        ))
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::msg(format!(
            "{}: the Globus token of remote `{remote}` is readable by others (mode {mode:o}): chmod 600 it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::msg(format!("{}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Failure::msg(format!(
            "{}: expected one Globus Transfer access token on one line",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// The system's CA certificates (SSL_CERT_FILE, else Debian's bundle):
/// the server's own TLS trusts only its pinned certificate, but the
/// Transfer API is reached through the public PKI.
fn system_roots() -> Result<Vec<reqwest::Certificate>, Failure> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(&path).map_err(|e| {
        Failure::msg(format!(
            "{}: cannot read the CA certificates to reach Globus ({e}): install ca-certificates or set SSL_CERT_FILE",
            path.display()
        ))
    })?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Failure::msg(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
