//! A server and a pilot in this process, on a private store: what `demo`,
//! `run --local` and `bench` use. They talk over loopback through the same
//! WebSocket and HTTP paths as separate processes would.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::client::Client;
use crate::pilot::PilotOptions;
use crate::server::{self, ServerOptions};
use crate::site::SiteConfig;
use crate::store::Durability;

pub struct Local {
    pub client: Client,
    pub home: PathBuf,
    server: server::Running,
    pilots: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub struct LocalOptions {
    /// State directory; a temporary one (removed at the end) when `None`.
    pub home: Option<PathBuf>,
    pub pilots: usize,
    pub cpus: Option<u32>,
    pub prefetch: Option<u32>,
    pub durability: Durability,
    pub site: SiteConfig,
}

impl Local {
    pub async fn start(o: LocalOptions) -> anyhow::Result<Self> {
        let (home, tmp) = match o.home {
            Some(h) => (h, None),
            None => {
                let t = tempfile::Builder::new().prefix("beamflow-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let srv = server::start(ServerOptions {
            durability: o.durability,
            ..ServerOptions::embedded(home.clone(), o.site)
        })
        .await?;
        let client = Client::pinned(&srv.url, &srv.token, srv.trust.clone());
        let mut pilots = Vec::new();
        for i in 0..o.pilots {
            let opts = PilotOptions {
                url: srv.url.clone(),
                trust: srv.trust.clone(),
                token: srv.token.clone(),
                token_file: None,
                name: Some(format!("local-{i}")),
                cpus: o.cpus,
                gpus: None,
                memory_mb: None,
                // On one machine there is nowhere else to run: the local
                // pilots serve every target, and a `gpu` step without a GPU
                // here takes its CPU variant.
                targets: Some(
                    ["cpu", "gpu", "edge", "realtime"]
                        .map(String::from)
                        .to_vec(),
                ),
                prefetch: o.prefetch,
                idle_timeout: None,
                walltime: None,
                walltime_end: None,
                reservation: None,
                site: None,
                preemptable: false,
                gpu_env: None,
                drain_margin: Duration::from_secs(60),
                server_lost_timeout: Duration::from_secs(60),
                nodes: Default::default(),
            };
            pilots.push(tokio::spawn(crate::pilot::run(opts)));
        }
        Ok(Local {
            client,
            home,
            server: srv,
            pilots,
            _tmp: tmp,
        })
    }

    pub fn store(&self) -> &crate::store::Store {
        &self.server.store
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for p in &self.pilots {
            p.abort();
        }
        let _ = self.server.shutdown.send(());
        self.server.task.await??;
        Ok(())
    }
}
