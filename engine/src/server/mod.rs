//! `beamflow server`: HTTP API for clients, WebSocket for pilots, SQLite store.

mod agent_conn;
mod api;
mod api_admin;
mod api_alloc;
mod api_tokens;
pub mod core;
mod pilot_conn;
pub mod tokens;
mod triggers;
pub mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::sync::{broadcast, mpsc};

use self::core::{AllocConfig, Core, CoreConfig, CoreMsg};
use crate::api::RunUpdate;
use crate::site::SiteConfig;
use crate::store::{Durability, Location, Store};

/// Everything `beamflow server` can be told.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// State directory: store, token, `server.json`, runs.
    pub home: PathBuf,
    pub bind: SocketAddr,
    /// SQLite file or PostgreSQL URL (default: HOME/beamflow.db).
    pub store: Option<Location>,
    pub runs_dir: Option<PathBuf>,
    pub site: SiteConfig,
    pub durability: Durability,
    pub pilot_timeout: Duration,
    pub heartbeat: Duration,
    /// The URL pilots in batch jobs connect to (default: the bound address).
    pub advertise_url: Option<String>,
    /// How often the allocation manager polls jobs nobody reports on.
    pub alloc_poll: Duration,
    /// See [`crate::alloc::Manager::with_patience`].
    pub alloc_patience: Duration,
    /// HTTPS and WSS with the generated certificate unless told otherwise.
    pub tls: crate::tls::ServerTls,
}

impl ServerOptions {
    /// Options for a server in this process (demo, tests, benches).
    pub fn embedded(home: PathBuf, site: SiteConfig) -> Self {
        ServerOptions {
            home,
            bind: "127.0.0.1:0".parse().expect("literal address"),
            store: None,
            runs_dir: None,
            site,
            durability: Durability::Normal,
            pilot_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            advertise_url: None,
            alloc_poll: Duration::from_secs(60),
            alloc_patience: Duration::from_secs_f64(crate::alloc::manager::DEFAULT_PATIENCE_S),
            tls: crate::tls::ServerTls::default(),
        }
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub(crate) struct App {
    pub core: mpsc::UnboundedSender<CoreMsg>,
    pub store: Store,
    pub updates: broadcast::Sender<RunUpdate>,
    /// The home token, named tokens and their roles (see [`tokens`]).
    pub tokens: Arc<std::sync::RwLock<tokens::Tokens>>,
    pub site: Arc<SiteConfig>,
    pub next_conn: Arc<AtomicU64>,
    pub triggers: triggers::Triggers,
    /// Where runs keep their files: the only files the web page serves.
    pub runs_dir: Arc<PathBuf>,
    /// Where `admin prune` writes the runs it removes (HOME/archive).
    pub archive_dir: Arc<PathBuf>,
    /// The web page's one-time sign-in codes (its session key derives
    /// from the home token: [`App::session`]).
    pub codes: ui::Codes,
    /// Served over TLS: the session cookie is then `Secure`, so a browser
    /// never sends it to a plain-HTTP port on the same host.
    pub tls: bool,
}

impl App {
    /// The role of a presented token, if it is one.
    pub fn role_of(&self, token: &str) -> Option<tokens::Role> {
        self.tokens.read().expect("tokens lock").role_of(token)
    }

    /// The web page's session key: derived from the home token, so a
    /// rotation signs the browsers out.
    pub fn session(&self, role: tokens::Role) -> String {
        ui::session_key(self.tokens.read().expect("tokens lock").admin(), role)
    }
}

/// A server running inside this process (for `demo`, `run --local`, `bench`).
pub struct Running {
    pub url: String,
    pub token: String,
    /// The server's certificate, for clients and pilots in this process.
    pub trust: Option<Arc<crate::tls::Trust>>,
    pub store: Store,
    pub shutdown: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Reads the API token, creating it (mode 0600) the first time.
pub fn ensure_token(home: &Path) -> anyhow::Result<String> {
    let path = home.join(crate::home::TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    std::fs::create_dir_all(home).with_context(|| format!("{}: cannot create", home.display()))?;
    let token = tokens::fresh()?;
    crate::home::write_private(&path, &token)?;
    Ok(token)
}

/// Binds, loads the store, resumes unfinished runs and serves until `shutdown`.
pub async fn start(opts: ServerOptions) -> anyhow::Result<Running> {
    let home = opts.home.clone();
    std::fs::create_dir_all(&home)
        .with_context(|| format!("{}: cannot create beamflow home", home.display()))?;
    let lock = crate::home::HomeLock::take(&home)?;
    let token = ensure_token(&home)?;
    let location = opts
        .store
        .clone()
        .unwrap_or_else(|| Location::Sqlite(home.join("beamflow.db")));
    let store = Store::open(&location, opts.durability)?;
    let runs_dir = opts.runs_dir.clone().unwrap_or_else(|| home.join("runs"));
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("cannot listen on {}", opts.bind))?;
    let addr = listener.local_addr()?;
    let identity = crate::tls::identity(&home, &opts.tls, addr)?;
    let scheme = if identity.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    let trust = identity.as_ref().map(|id| id.trust());
    let tls_config = identity.as_ref().map(|id| id.server_config()).transpose()?;
    let pilot_url = opts.advertise_url.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            format!("{scheme}://{}:{}", crate::host::hostname(), addr.port())
        } else {
            url.clone()
        }
    });
    let (core_tx, core_rx) = mpsc::unbounded_channel();
    let (updates, _) = broadcast::channel(65536);
    let cfg = CoreConfig {
        pilot_timeout: opts.pilot_timeout,
        heartbeat: opts.heartbeat,
        runs_dir: runs_dir.display().to_string(),
        site: opts.site.clone(),
        alloc: AllocConfig {
            poll_interval: opts.alloc_poll,
            patience: opts.alloc_patience,
            dir: home.join("alloc"),
            exe: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "beamflow".to_string()),
            url: pilot_url,
            token_file: home.join(crate::home::PILOT_TOKEN_FILE),
            server_cert: identity.as_ref().map(|id| id.cert_path.clone()),
        },
    };
    let core = Core::load(cfg, store.clone(), core_tx.clone(), updates.clone())?;
    tokio::spawn(core.run(core_rx));
    {
        let tx = core_tx.clone();
        let period =
            (opts.pilot_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            loop {
                iv.tick().await;
                if tx.send(CoreMsg::Tick).is_err() {
                    break;
                }
            }
        });
    }
    // The newest version of each flow decides its triggers.
    let mut newest: Vec<crate::flow::FlowSpec> = store
        .read(crate::store::flows)?
        .into_iter()
        .map(|f| f.spec)
        .collect();
    newest.dedup_by(|b, a| a.name == b.name);
    let mut tokens = tokens::Tokens::load(&home, token.clone())?;
    tokens.ensure_pilot_token()?;
    let triggers = triggers::Triggers::start(
        home.clone(),
        triggers::CoreSubmit {
            core: core_tx.clone(),
            store: store.clone(),
        },
        newest,
    );
    let app = App {
        triggers,
        core: core_tx,
        store: store.clone(),
        updates,
        tokens: Arc::new(std::sync::RwLock::new(tokens)),
        site: Arc::new(opts.site.clone()),
        next_conn: Arc::new(AtomicU64::new(1)),
        runs_dir: Arc::new(runs_dir.clone()),
        archive_dir: Arc::new(home.join("archive")),
        codes: ui::Codes::default(),
        tls: identity.is_some(),
    };
    // Small frames (one result, one task) must leave at once: with Nagle's
    // algorithm they wait for the peer's delayed ACK, up to 40 ms a step.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let access = crate::home::Access {
        url: url.clone(),
        pid: std::process::id(),
        store: location.to_string(),
        cert: identity
            .as_ref()
            .map(|id| id.cert_path.display().to_string()),
        fingerprint: identity.as_ref().map(|id| id.fingerprint.clone()),
    };
    access.write(&home)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = api::router(app);
    let flush_store = store.clone();
    let task = tokio::spawn(async move {
        // Held until the server has stopped and removed its server.json.
        let _lock = lock;
        let stop = async move {
            let _ = stop_rx.await;
        };
        match tls_config {
            Some(cfg) => {
                axum::serve(crate::tls::TlsListener::new(listener, cfg)?, router)
                    .with_graceful_shutdown(stop)
                    .await?
            }
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await?
            }
        }
        flush_store.flush().await;
        access.remove_if_own(&home);
        Ok(())
    });
    tracing::info!("beamflow server on {url} (store {location})");
    if let Some(id) = &identity {
        tracing::info!(
            "TLS certificate {} (SHA-256 {})",
            id.cert_path.display(),
            id.fingerprint
        );
    }
    Ok(Running {
        url,
        token,
        trust,
        store,
        shutdown: stop_tx,
        task,
    })
}
