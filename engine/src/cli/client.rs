//! HTTP client for the CLI: finds the server, sends the token, turns error
//! bodies into messages, and waits on runs through the server's event stream.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::{
    CatalogRow, ErrorBody, FlowRow, History, HistoryQuery, IssuedToken, LogEntry, LogQuery,
    Message, NewToken, PilotRow, PruneReport, PruneRequest, QueueAdded, QueueInfo, QueueSpec,
    RegisterFlow, Registered, RemoveQueue, Revoked, Rotate, Rotated, RunDetail, RunExplain,
    RunFilter, RunRow, RunUpdate, SubmitRuns, Submitted, TokenInfo, UiCode, VersionQuery,
};
use crate::home::Access;
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
        let r: UiCode = self.post("/api/ui/code", &serde_json::json!({})).await?;
        Ok(format!("{}/ui/login?code={}", self.url, r.code))
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
                let saved = Access::saved(home);
                Access {
                    url: u,
                    pid: 0,
                    store: String::new(),
                    cert: saved.as_ref().and_then(|a| a.cert.clone()),
                    fingerprint: saved.and_then(|a| a.fingerprint),
                }
            }
            None => Access::read(home)?,
        };
        let trust = trust_for(home, &access, server_cert)?;
        let url = access.url;
        let token = match token {
            Some(t) => t,
            None => crate::home::read_token(&home.join(crate::home::TOKEN_FILE))
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
        let url = resp.url().path().to_string();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer to {url} from {}", self.url))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| "no details".into());
            return Err(anyhow!("{msg} (HTTP {})", status.as_u16()));
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from the server to {url}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// `GET path?query`, the query from a struct of the API.
    pub async fn get_with<T: DeserializeOwned, Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.url)).query(query))
            .await
    }

    pub async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.url)))
            .await
    }

    /// Registered flows, every version.
    pub async fn flows(&self) -> anyhow::Result<Vec<FlowRow>> {
        self.get("/api/flows").await
    }

    /// One flow (its newest version, or `version`) with its source.
    pub async fn flow(&self, name: &str, version: Option<u32>) -> anyhow::Result<FlowRow> {
        self.get_with(&format!("/api/flows/{name}"), &VersionQuery { version })
            .await
    }

    pub async fn runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<RunRow>> {
        self.get_with("/api/runs", filter).await
    }

    /// A run with its attempts and events.
    pub async fn run(&self, id: u64) -> anyhow::Result<RunDetail> {
        self.get(&format!("/api/runs/{id}")).await
    }

    /// Why the run's live steps wait, or where they run.
    pub async fn explain(&self, id: u64) -> anyhow::Result<RunExplain> {
        self.get(&format!("/api/runs/{id}/explain")).await
    }

    pub async fn cancel(&self, id: u64) -> anyhow::Result<Message> {
        self.post(&format!("/api/runs/{id}/cancel"), &serde_json::json!({}))
            .await
    }

    pub async fn retry(&self, id: u64) -> anyhow::Result<Message> {
        self.post(&format!("/api/runs/{id}/retry"), &serde_json::json!({}))
            .await
    }

    pub async fn pilots(&self) -> anyhow::Result<Vec<PilotRow>> {
        self.get("/api/pilots").await
    }

    pub async fn sites(&self) -> anyhow::Result<Vec<crate::api::SiteInfo>> {
        self.get("/api/sites").await
    }

    /// Catalog records matching every word of `text` and every
    /// `KEY=VALUE` of `fields`.
    pub async fn catalog(
        &self,
        text: Option<&str>,
        fields: &[String],
        limit: usize,
    ) -> anyhow::Result<Vec<CatalogRow>> {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(t) = text {
            q.push(("q", t.to_string()));
        }
        q.extend(fields.iter().map(|f| ("field", f.clone())));
        self.get_with("/api/catalog", &q).await
    }

    /// The newest `limit` runs of `flow` with their attempts.
    pub async fn history(&self, flow: &str, limit: usize) -> anyhow::Result<History> {
        let q = HistoryQuery {
            flow: flow.to_string(),
            limit: Some(limit),
        };
        self.get_with("/api/report", &q).await
    }

    pub async fn add_token(&self, t: &NewToken) -> anyhow::Result<IssuedToken> {
        self.post("/api/tokens", t).await
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        self.get("/api/tokens").await
    }

    pub async fn revoke_token(&self, name: &str) -> anyhow::Result<Revoked> {
        self.delete(&format!("/api/tokens/{name}")).await
    }

    pub async fn rotate_token(&self, grace: Duration) -> anyhow::Result<Rotated> {
        let r = Rotate {
            grace_s: grace.as_secs_f64(),
        };
        self.post("/api/tokens/rotate", &r).await
    }

    pub async fn prune(&self, r: &PruneRequest) -> anyhow::Result<PruneReport> {
        self.post("/api/admin/prune", r).await
    }

    pub async fn add_queue(&self, spec: &QueueSpec) -> anyhow::Result<QueueAdded> {
        self.post("/api/alloc", spec).await
    }

    pub async fn queues(&self) -> anyhow::Result<Vec<QueueInfo>> {
        self.get("/api/alloc").await
    }

    pub async fn pause_queue(&self, id: u64) -> anyhow::Result<Message> {
        self.post(&format!("/api/alloc/{id}/pause"), &serde_json::json!({}))
            .await
    }

    pub async fn resume_queue(&self, id: u64) -> anyhow::Result<Message> {
        self.post(&format!("/api/alloc/{id}/resume"), &serde_json::json!({}))
            .await
    }

    pub async fn remove_queue(&self, id: u64, cancel: bool) -> anyhow::Result<Message> {
        let q = RemoveQueue { cancel };
        self.send(
            self.http
                .delete(format!("{}/api/alloc/{id}", self.url))
                .query(&q),
        )
        .await
    }

    pub async fn alloc_log(&self, q: &LogQuery) -> anyhow::Result<Vec<LogEntry>> {
        self.get_with("/api/alloc/log", q).await
    }

    /// The flow `flow` names: itself, or — for a flow file — the name it
    /// is registered under (registering it first).
    pub async fn flow_name(&self, flow: &str) -> anyhow::Result<String> {
        if is_flow_file(flow) {
            Ok(self.register(Path::new(flow)).await?.name)
        } else {
            Ok(flow.to_string())
        }
    }

    /// Registers a flow file.
    pub async fn register(&self, path: &Path) -> anyhow::Result<Registered> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        self.register_source(&source, &path.display().to_string())
            .await
    }

    /// Registers a flow given as text; `path` names it in messages.
    pub async fn register_source(&self, source: &str, path: &str) -> anyhow::Result<Registered> {
        let body = RegisterFlow {
            source: source.to_string(),
            path: Some(path.to_string()),
        };
        self.post("/api/flows", &body).await
    }

    /// Starts a run of `flow` for each input (all or none).
    pub async fn submit(
        &self,
        flow: &str,
        version: Option<u32>,
        inputs: Vec<Value>,
    ) -> anyhow::Result<Vec<u64>> {
        let body = SubmitRuns {
            flow: flow.to_string(),
            version,
            input: None,
            inputs: Some(inputs),
        };
        let r: Submitted = self.post("/api/runs", &body).await?;
        Ok(r.runs)
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
                        if u.state.is_finished() {
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
        self.runs(&RunFilter {
            since: Some(lo),
            until: Some(hi),
            limit: Some((hi - lo + 1) as usize),
            ..Default::default()
        })
        .await
    }

    /// Reads the runs in `want` and records those that have finished.
    async fn refresh(
        &self,
        want: &HashSet<u64>,
        finished: &mut HashSet<u64>,
    ) -> anyhow::Result<()> {
        for r in self.read_range(want).await? {
            if want.contains(&r.id) && r.state.is_finished() {
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
    access: &Access,
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
