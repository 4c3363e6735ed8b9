//! The `[[trigger]]` tables of registered flows, run by the server: each
//! is a [`crate::watch`] trigger on the server's machine that submits
//! through the core's channel, as the API's handlers do (so its runs are
//! checked and stored like any other). The newest version of a flow decides its triggers; a new
//! version replaces them. A trigger that fails (its directory missing, say)
//! is logged and started again after a pause.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::CoreMsg;
use crate::api::History;
use crate::flow::FlowSpec;
use crate::store::Store;
use crate::watch::{self, Log, Submit, WatchSpec};

/// Submits to the core directly: a trigger inside the server needs no
/// HTTP, no token and no certificate.
#[derive(Clone)]
pub(crate) struct CoreSubmit {
    pub core: mpsc::UnboundedSender<CoreMsg>,
    pub store: Store,
}

impl Submit for CoreSubmit {
    async fn flow_name(&self, flow: &str) -> anyhow::Result<String> {
        // A `[[trigger]]` belongs to the registered flow it names.
        Ok(flow.to_string())
    }

    async fn submit(&self, flow: &str, input: Value) -> anyhow::Result<Vec<u64>> {
        let (reply, rx) = oneshot::channel();
        let msg = CoreMsg::Submit {
            flow: flow.to_string(),
            version: None,
            inputs: vec![input],
            reply,
        };
        let gone = || anyhow::anyhow!("the server is shutting down");
        self.core.send(msg).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    async fn history(&self, flow: &str) -> anyhow::Result<History> {
        let (store, flow) = (self.store.clone(), flow.to_string());
        tokio::task::spawn_blocking(move || {
            store.read(|c| crate::store::flow_history(c, &flow, 100_000))
        })
        .await?
        .map(|(runs, attempts)| History { runs, attempts })
    }
}

/// Hands flows to the trigger task; dropping it stops nothing (triggers
/// live as long as the server's runtime).
#[derive(Clone)]
pub(crate) struct Triggers(mpsc::UnboundedSender<FlowSpec>);

impl Triggers {
    /// Starts the task that keeps the triggers of `flows` (and of flows
    /// registered later) running; they submit through `client`.
    pub fn start(home: PathBuf, client: CoreSubmit, flows: Vec<FlowSpec>) -> Triggers {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlowSpec>();
        tokio::spawn(async move {
            let mut running: HashMap<String, (u32, Vec<JoinHandle<()>>)> = HashMap::new();
            let set =
                |spec: FlowSpec, running: &mut HashMap<String, (u32, Vec<JoinHandle<()>>)>| {
                    if running
                        .get(&spec.name)
                        .is_some_and(|(v, _)| *v > spec.version)
                    {
                        return;
                    }
                    if let Some((_, old)) = running.remove(&spec.name) {
                        old.iter().for_each(JoinHandle::abort);
                    }
                    let tasks = spec
                        .triggers
                        .iter()
                        .map(|t| {
                            let w = WatchSpec::from_trigger(&spec.name, t, &home);
                            tokio::spawn(keep(w, client.clone()))
                        })
                        .collect();
                    running.insert(spec.name.clone(), (spec.version, tasks));
                };
            for f in flows {
                set(f, &mut running);
            }
            while let Some(f) = rx.recv().await {
                set(f, &mut running);
            }
        });
        Triggers(tx)
    }

    /// A flow was registered.
    pub fn flow(&self, spec: FlowSpec) {
        let _ = self.0.send(spec);
    }
}

/// Runs one trigger, again after a failure.
async fn keep(w: WatchSpec, client: CoreSubmit) {
    loop {
        match watch::watch(w.clone(), client.clone(), Log).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(
                    "trigger of flow {} on {}: {e:#}; starting again in 30 s",
                    w.flow,
                    w.dir.display()
                );
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}
