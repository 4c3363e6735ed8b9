//! `beamflow agent`: run a facility's scheduler for a server elsewhere, and
//! `beamflow sites`: the sites a server submits to.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::client::Client;
use super::render::{dash, table};
use super::Ctx;
use crate::agent::wire::PilotReach;
use crate::site::SiteConfig;
use crate::util::fmt_ts;

#[derive(Args)]
pub struct AgentArgs {
    /// The site this agent runs: a name from site-configs/ or a path.
    #[arg(long)]
    site: String,
    /// The server's URL as this machine reaches it (default: --url).
    #[arg(long)]
    server: Option<String>,
    /// A token of the `agent` role (made on the server with `beamflow token
    /// create NAME --role agent`), read from this file; or --token.
    #[arg(long, env = "BEAMFLOW_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The pilots' token file, on a filesystem the compute nodes see (a
    /// token of the `pilot` role: `beamflow token add NAME --role pilot` on the server).
    #[arg(long)]
    pilot_token_file: PathBuf,
    /// Relay pilot connections: listen here (e.g. 0.0.0.0:8443) and
    /// forward to the server, for compute nodes with no route to it.
    #[arg(long)]
    relay: Option<std::net::SocketAddr>,
    /// The URL pilots connect to (default: the relay's, with --relay;
    /// else the server's).
    #[arg(long)]
    pilot_url: Option<String>,
    /// Job directories (scripts, output, ids; default HOME/agent/SITE).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl AgentArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let path = crate::site::find(&self.site)?;
        let site = SiteConfig::load(&path)?;
        let url = self.server.or_else(|| cx.url.clone()).context(
            "which server? pass --server URL (the server's address as this machine reaches it)",
        )?;
        let token = match (&self.token_file, &cx.token) {
            (Some(f), _) => crate::home::read_token(f)
                .with_context(|| format!("--token-file {}", f.display()))?,
            (None, Some(t)) => t.clone(),
            (None, None) => anyhow::bail!(
                "the agent needs a token of the `agent` role: make one on the server with \
                 `beamflow token add NAME --role agent` and pass --token-file FILE"
            ),
        };
        crate::home::read_token(&self.pilot_token_file).with_context(|| {
            format!(
                "--pilot-token-file {}: the pilots of this site read their token there",
                self.pilot_token_file.display()
            )
        })?;
        let client = Client::discover(
            &cx.home,
            Some(url.clone()),
            Some(token.clone()),
            cx.server_cert.clone(),
        )?;
        let pilot_url = match (&self.pilot_url, self.relay) {
            (Some(u), _) => u.clone(),
            (None, Some(addr)) => crate::agent::relay::relayed_url(&url, addr),
            (None, None) => url.clone(),
        };
        let server_cert = match &cx.server_cert {
            Some(c) => Some(
                std::path::absolute(c).with_context(|| format!("--server-cert {}", c.display()))?,
            ),
            None => None,
        };
        if pilot_url.starts_with("https://") && server_cert.is_none() {
            anyhow::bail!(
                "the pilots connect to {pilot_url} and must pin the server's certificate: pass \
                 --server-cert FILE (a copy of the server's BEAMFLOW_HOME/{}, on a filesystem \
                 the compute nodes see)",
                crate::tls::CERT_FILE
            );
        }
        if let Some(addr) = self.relay {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--relay {addr}: cannot listen"))?;
            let to = crate::agent::relay::server_addr(&url).map_err(anyhow::Error::msg)?;
            tracing::info!("relaying pilot connections from {addr} to {to}");
            tokio::spawn(crate::agent::relay::serve(listener, to));
        }
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "beamflow".into());
        let dir = self
            .dir
            .unwrap_or_else(|| cx.home.join("agent").join(&site.name));
        crate::agent::run(crate::agent::AgentOptions {
            site,
            url: client.url.clone(),
            token,
            trust: client.trust.clone(),
            dir: std::path::absolute(&dir).unwrap_or(dir),
            reach: PilotReach {
                exe,
                url: pilot_url,
                token_file: std::path::absolute(&self.pilot_token_file)
                    .unwrap_or(self.pilot_token_file),
                server_cert,
            },
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `beamflow sites`.
pub async fn list(cx: &Ctx) -> anyhow::Result<ExitCode> {
    let rows = cx.client()?.sites().await?;
    cx.out.show(&rows, |rows| {
        let mut t = table(&[
            "site",
            "scheduler",
            "run by",
            "agent",
            "targets",
            "queues",
            "jobs queued",
            "jobs running",
            "pilots",
        ]);
        for s in rows {
            let agent = s.agent.as_ref().map(|a| {
                format!(
                    "{} on {} since {}",
                    if a.connected { "connected" } else { "gone" },
                    a.host,
                    fmt_ts(a.since_us)
                )
            });
            t.add_row(vec![
                s.name.clone(),
                s.scheduler.clone(),
                s.run_by.clone(),
                dash(agent.as_deref()),
                s.targets.join(","),
                s.queues
                    .iter()
                    .map(|q| q.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                s.jobs_queued.to_string(),
                s.jobs_running.to_string(),
                s.pilots.to_string(),
            ]);
        }
        t
    });
    Ok(ExitCode::SUCCESS)
}
