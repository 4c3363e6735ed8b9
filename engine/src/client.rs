//! HTTP client for the CLI: finds the server, sends the token, turns error
//! bodies into messages, and waits on runs through the server's event stream.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::server::core::RunUpdate;
use crate::store::RunRow;
use crate::tls::Trust;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub url: String,
    token: String,
    /// The certificate an https server must present (see [`crate::tls`]).
    pub trust: Option<Arc<Trust>>,
}

impl Client {
    /// A client trusting no certificate: for http:// URLs.
    pub fn new(url: &str, token: &str) -> Self {
        Client::pinned(url, token, None)
    }

    /// A client that accepts only a server presenting `trust`'s certificate.
    pub fn pinned(url: &str, token: &str, trust: Option<Arc<Trust>>) -> Self {
        Client {
            http: http_builder(trust.as_ref()).build().expect("http client"),
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            trust,
        }
    }

    /// The same server, trusted the same way, with another token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_string(),
            ..self.clone()
        }
    }

    /// A builder for raw HTTP requests to this server, trusting it as this
    /// client does (tests and tools that need what [`Client`] hides).
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        http_builder(self.trust.as_ref())
    }

    /// A link that signs a browser in to the web page once, within two
    /// minutes (it carries a one-time code, not the token).
    pub async fn ui_login_url(&self) -> anyhow::Result<String> {
        let r: serde_json::Value = self.post("/api/ui/code", &serde_json::json!({})).await?;
        let code = r["code"]
            .as_str()
            .ok_or_else(|| anyhow!("the server gave no sign-in code: {r}"))?;
        Ok(format!("{}/ui/login?code={code}", self.url))
    }

    /// `--url`/`BEAMFLOW_URL`, else `HOME/server.json`; `--token`/
    /// `BEAMFLOW_TOKEN`, else `HOME/token`. An https server must present
    /// the certificate in `--server-cert`/`BEAMFLOW_SERVER_CERT`, else the
    /// one `server.json` names, else `HOME/tls/cert.pem`.
    pub fn discover(
        home: &Path,
        url: Option<String>,
        token: Option<String>,
        server_cert: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let access = match url {
            // Another URL, the same pin: the certificate of this home's
            // server, which an impostor at that URL does not have.
            Some(u) => {
                let saved: Option<crate::server::Access> =
                    std::fs::read_to_string(home.join("server.json"))
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok());
                crate::server::Access {
                    url: u,
                    pid: 0,
                    store: String::new(),
                    cert: saved.as_ref().and_then(|a| a.cert.clone()),
                    fingerprint: saved.and_then(|a| a.fingerprint),
                }
            }
            None => {
                let p = home.join("server.json");
                let text = std::fs::read_to_string(&p).with_context(|| {
                    format!("no server found: {} is missing (start `beamflow server`, or pass --url / BEAMFLOW_URL)", p.display())
                })?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid", p.display()))?
            }
        };
        let trust = trust_for(home, &access, server_cert)?;
        let url = access.url;
        let token = match token {
            Some(t) => t,
            None => crate::pilot::read_token(&home.join("token"))
                .context("pass --token / BEAMFLOW_TOKEN, or use the server's BEAMFLOW_HOME")?,
        };
        Ok(Client::pinned(&url, &token, trust))
    }

    /// Says why a request did not reach the server: a refused certificate
    /// names both fingerprints, a failed handshake its cause.
    pub fn request_error(&self, e: &reqwest::Error) -> anyhow::Error {
        if let Some(r) = crate::tls::refusal(e) {
            return anyhow!("{r}");
        }
        let cause = crate::tls::root_cause(e);
        if e.is_connect() && self.url.starts_with("https://") && !is_socket_error(e) {
            anyhow!(
                "TLS with the beamflow server at {} failed: {cause} (a server started with \
                 --no-tls is reached at an http:// URL)",
                self.url
            )
        } else if e.is_connect() {
            anyhow!(
                "cannot reach the beamflow server at {}: {cause} (is `beamflow server` running?)",
                self.url
            )
        } else if self.url.starts_with("http://") {
            anyhow!(
                "request to {} failed: {cause} (a server with TLS on, the default, is reached \
                 at https://)",
                self.url
            )
        } else {
            anyhow!("request to {} failed: {cause}", self.url)
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.request_error(&e))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no details");
            return Err(anyhow!("{msg} (HTTP {})", status.as_u16()));
        }
        serde_json::from_value(body).context("unexpected response from the server")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.url)))
            .await
    }

    /// The flow `flow` names: itself, or — for a flow file — the name it
    /// is registered under (registering it first).
    pub async fn flow_name(&self, flow: &str) -> anyhow::Result<String> {
        if is_flow_file(flow) {
            Ok(self.register(Path::new(flow)).await?.0)
        } else {
            Ok(flow.to_string())
        }
    }

    /// Registers a flow file; returns (name, version, changed).
    pub async fn register(&self, path: &Path) -> anyhow::Result<(String, u32, bool)> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let r: Value = self
            .post(
                "/api/flows",
                &serde_json::json!({ "source": source, "path": path.display().to_string() }),
            )
            .await?;
        Ok((
            r["name"].as_str().unwrap_or_default().to_string(),
            r["version"].as_u64().unwrap_or(0) as u32,
            r["changed"].as_bool().unwrap_or(false),
        ))
    }

    pub async fn submit(
        &self,
        flow: &str,
        version: Option<u32>,
        inputs: Vec<Value>,
    ) -> anyhow::Result<Vec<u64>> {
        let body = serde_json::json!({ "flow": flow, "version": version, "inputs": inputs });
        let r: Value = self.post("/api/runs", &body).await?;
        Ok(r["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default())
    }

    /// Waits until every run in `ids` has finished. Subscribes to the event
    /// stream first and reads the current state second, so no change is lost.
    pub async fn wait(
        &self,
        ids: &[u64],
        progress: bool,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Vec<RunRow>> {
        let work = self.wait_inner(ids, progress);
        match timeout {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| anyhow!("timed out after {t:?} waiting for runs"))?,
            None => work.await,
        }
    }

    async fn wait_inner(&self, ids: &[u64], progress: bool) -> anyhow::Result<Vec<RunRow>> {
        let want: HashSet<u64> = ids.iter().copied().collect();
        let filter = if ids.len() <= 200 {
            format!(
                "?runs={}",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        };
        let resp = self
            .http
            .get(format!("{}/api/events{filter}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.request_error(&e))?;
        if !resp.status().is_success() {
            return Err(anyhow!(
                "event stream refused (HTTP {})",
                resp.status().as_u16()
            ));
        }
        let mut stream = resp.bytes_stream();
        let bar = progress.then(|| progress_bar(ids));
        // Runs known to have finished (from the stream or a read); their rows
        // are read once at the end, not on every update.
        let mut finished: HashSet<u64> = HashSet::new();
        let mut steps: HashMap<u64, (usize, usize)> = HashMap::new();
        self.refresh(&want, &mut finished).await?;
        let mut buf = String::new();
        loop {
            if let Some(b) = &bar {
                update_bar(b, ids.len(), finished.len(), &steps);
            }
            if finished.len() == want.len() {
                break;
            }
            let Some(chunk) = stream.next().await else {
                return Err(anyhow!("the server closed the event stream"));
            };
            buf.push_str(&String::from_utf8_lossy(
                &chunk.context("event stream broke")?,
            ));
            let mut lagged = false;
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let kind = event
                    .lines()
                    .find_map(|l| l.strip_prefix("event:"))
                    .map(str::trim)
                    .unwrap_or("");
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                match kind {
                    "run" => {
                        let Ok(u) = serde_json::from_str::<RunUpdate>(&data) else {
                            continue;
                        };
                        if !want.contains(&u.run) {
                            continue;
                        }
                        steps.insert(u.run, (u.steps_done, u.steps_total));
                        if is_terminal(&u.state) {
                            finished.insert(u.run);
                        }
                    }
                    "lagged" => lagged = true,
                    _ => {}
                }
            }
            if lagged {
                self.refresh(&want, &mut finished).await?;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut out = self.read_range(&want).await?;
        out.retain(|r| want.contains(&r.id));
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn read_range(&self, want: &HashSet<u64>) -> anyhow::Result<Vec<RunRow>> {
        let lo = want.iter().min().copied().unwrap_or(0);
        let hi = want.iter().max().copied().unwrap_or(0);
        self.get(&format!(
            "/api/runs?since={lo}&until={hi}&limit={}",
            hi - lo + 1
        ))
        .await
    }

    /// Reads the runs in `want` and records those that have finished.
    async fn refresh(
        &self,
        want: &HashSet<u64>,
        finished: &mut HashSet<u64>,
    ) -> anyhow::Result<()> {
        for r in self.read_range(want).await? {
            if want.contains(&r.id) && is_terminal(&r.state) {
                finished.insert(r.id);
            }
        }
        Ok(())
    }
}

fn http_builder(trust: Option<&Arc<Trust>>) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().no_proxy();
    match trust {
        Some(t) => b.use_preconfigured_tls(t.client_config()),
        None => b,
    }
}

/// Whether the connection failed before TLS began (nothing listening,
/// no route): the system's own error, not one the handshake raised.
fn is_socket_error(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            return io.get_ref().is_none();
        }
        cur = x.source();
    }
    false
}

/// The certificate to pin for `access`'s server: none for http://.
fn trust_for(
    home: &Path,
    access: &crate::server::Access,
    server_cert: Option<PathBuf>,
) -> anyhow::Result<Option<Arc<Trust>>> {
    if !access.url.starts_with("https://") {
        return Ok(None);
    }
    let path = server_cert
        .or_else(|| access.cert.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| crate::tls::home_cert(home));
    let trust = Trust::load(&path).with_context(|| {
        format!(
            "{} serves TLS, and the client trusts only the server's own certificate: pass \
             --server-cert FILE or set BEAMFLOW_SERVER_CERT (a copy of the server's \
             BEAMFLOW_HOME/{})",
            access.url,
            crate::tls::CERT_FILE
        )
    })?;
    if let Some(fp) = &access.fingerprint {
        if !trust.pins(fp) {
            return Err(anyhow!(
                "{} holds the certificate with SHA-256 {}, but server.json says the server's is \
                 {fp}: the file is stale or another server's",
                path.display(),
                trust.fingerprint()
            ));
        }
    }
    Ok(Some(Arc::new(trust)))
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

fn progress_bar(ids: &[u64]) -> indicatif::ProgressBar {
    let n = ids.len();
    let bar = indicatif::ProgressBar::new(0);
    if n == 1 {
        bar.set_message(ids[0].to_string());
    }
    let style = if n == 1 {
        "{spinner} run {msg} [{bar:30}] {pos}/{len} steps {elapsed}"
    } else {
        "{spinner} {msg} [{bar:30}] {pos}/{len} runs {elapsed} ({per_sec})"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(style)
            .expect("template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn update_bar(
    bar: &indicatif::ProgressBar,
    n: usize,
    finished: usize,
    steps: &HashMap<u64, (usize, usize)>,
) {
    if n == 1 {
        let (d, t) = steps.values().next().copied().unwrap_or((0, 0));
        bar.set_length(t.max(1) as u64);
        bar.set_position(if finished > 0 { t.max(1) } else { d } as u64);
    } else {
        bar.set_length(n as u64);
        bar.set_position(finished as u64);
    }
}

/// Whether `flow` is a flow file (a `.toml` path, or any existing file)
/// rather than a registered flow's name.
pub fn is_flow_file(flow: &str) -> bool {
    flow.ends_with(".toml") || Path::new(flow).is_file()
}
