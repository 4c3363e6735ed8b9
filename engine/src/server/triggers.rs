//! The `[[trigger]]` tables of registered flows, run by the server: each
//! is a [`crate::watch`] trigger on the server's machine that submits
//! through the server's own API (so its runs are checked and stored like
//! any other). The newest version of a flow decides its triggers; a new
//! version replaces them. A trigger that fails (its directory missing, say)
//! is logged and started again after a pause.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::flow::FlowSpec;
use crate::watch::{self, Say, WatchSpec};

/// Hands flows to the trigger task; dropping it stops nothing (triggers
/// live as long as the server's runtime).
#[derive(Clone)]
pub(crate) struct Triggers(mpsc::UnboundedSender<FlowSpec>);

impl Triggers {
    /// Starts the task that keeps the triggers of `flows` (and of flows
    /// registered later) running; they submit through `client`.
    pub fn start(home: PathBuf, client: Client, flows: Vec<FlowSpec>) -> Triggers {
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
async fn keep(w: WatchSpec, client: Client) {
    loop {
        match watch::watch(w.clone(), client.clone(), Say::Log).await {
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
