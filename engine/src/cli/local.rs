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
        let mut local = Local {
            client,
            home,
            server: srv,
            pilots: Vec::new(),
            _tmp: tmp,
        };
        for i in 0..o.pilots {
            let opts = local.pilot_options(&format!("local-{i}"), o.cpus, o.prefetch, None);
            local.spawn_pilot(opts);
        }
        Ok(local)
    }

    /// An in-process pilot of this server named `name`, at `site` (the
    /// server's own when `None`).
    pub fn pilot_options(
        &self,
        name: &str,
        cpus: Option<u32>,
        prefetch: Option<u32>,
        site: Option<String>,
    ) -> PilotOptions {
        PilotOptions {
            url: self.server.url.clone(),
            trust: self.server.trust.clone(),
            token: self.server.token.clone(),
            token_file: None,
            name: Some(name.to_string()),
            cpus,
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
            prefetch,
            idle_timeout: None,
            walltime: None,
            walltime_end: None,
            reservation: None,
            site,
            preemptable: false,
            gpu_env: None,
            drain_margin: Duration::from_secs(60),
            server_lost_timeout: Duration::from_secs(60),
            nodes: Default::default(),
        }
    }

    /// Starts a pilot in this process; it stops with [`Local::stop`].
    pub fn spawn_pilot(&mut self, opts: PilotOptions) {
        self.pilots.push(tokio::spawn(crate::pilot::run(opts)));
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
