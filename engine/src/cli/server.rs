//! `beamflow server`: the server in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{duration, Ctx};
use crate::site::SiteConfig;
use crate::store::Durability;

#[derive(Args)]
pub struct ServerArgs {
    /// The address to listen on (HTTPS API, web page and pilot endpoint).
    #[arg(long, default_value = "127.0.0.1:7878")]
    bind: std::net::SocketAddr,
    /// The store: a SQLite file (default HOME/beamflow.db) or a PostgreSQL
    /// database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (through a
    /// Unix socket: `postgres://USER@localhost/DB?host=/run/postgresql`).
    /// One server per database.
    #[arg(
        long = "db",
        visible_alias = "store",
        env = "BEAMFLOW_DB",
        hide_env_values = true
    )]
    db: Option<String>,
    /// Where run directories go (default HOME/runs); must be visible to pilots.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Site config (site-configs/NAME.toml); default: this machine, no limits.
    #[arg(long)]
    site: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "normal")]
    durability: Durability,
    /// A pilot silent or disconnected this long is lost and its tasks requeued.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pilot_timeout: Duration,
    /// How often pilots send heartbeats.
    #[arg(long, default_value = "2s", value_parser = duration)]
    heartbeat: Duration,
    /// The URL pilots in batch jobs connect to, when compute nodes reach this
    /// server by another name than the bound address (a site config's
    /// `pilot.server_url` wins).
    #[arg(long)]
    advertise_url: Option<String>,
    /// How often allocation jobs nobody reports on are polled with
    /// squeue/qstat (pilots report start and end themselves).
    #[arg(long, default_value = "60s", value_parser = duration)]
    alloc_poll: Duration,
    /// How much later than another queue's expected start a queue's queued
    /// pilot job may be before that other queue submits for the same work.
    #[arg(long, default_value = "2m", value_parser = duration)]
    alloc_patience: Duration,
    /// A name or address clients and pilots use for this server, put in
    /// the certificate generated on first start (repeatable; localhost,
    /// 127.0.0.1, ::1 and the host name are always in it).
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Serve this certificate (PEM, its chain after it) instead of the one
    /// generated in HOME/tls/.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_names")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP: the token and all data cross the network in clear
    /// text. Only behind a proxy that terminates TLS, or on loopback.
    #[arg(long, conflicts_with_all = ["tls_names", "tls_cert", "tls_key"])]
    no_tls: bool,
}

impl ServerArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let site = match &self.site {
            Some(p) => SiteConfig::load(p)?,
            None => SiteConfig::local(),
        };
        let running = crate::server::start(crate::server::ServerOptions {
            home: cx.home.clone(),
            bind: self.bind,
            store: self.db.as_deref().map(crate::store::Location::parse),
            runs_dir: self.runs_dir,
            site,
            durability: self.durability,
            pilot_timeout: self.pilot_timeout,
            heartbeat: self.heartbeat,
            advertise_url: self.advertise_url,
            alloc_poll: self.alloc_poll,
            alloc_patience: self.alloc_patience,
            tls: match (self.no_tls, self.tls_cert, self.tls_key) {
                (true, _, _) => crate::tls::ServerTls::Off,
                (false, Some(cert), Some(key)) => crate::tls::ServerTls::Files { cert, key },
                _ => crate::tls::ServerTls::Generated {
                    names: self.tls_names,
                },
            },
        })
        .await?;
        eprintln!(
            "beamflow server listening on {} (home {})",
            running.url,
            cx.home.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = running.shutdown.send(());
        running.task.await??;
        Ok(ExitCode::SUCCESS)
    }
}
