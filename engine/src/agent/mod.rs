//! A site agent: the process on a facility's login node that runs the
//! facility's scheduler for a server somewhere else.
//!
//! The agent connects out (compute facilities accept outbound connections
//! far more readily than inbound ones) to the server's `/api/agent` with a
//! token of the `agent` role, says which site it runs, and then does what
//! the server's allocation manager decides: submits pilot jobs (rendered
//! here, so the script names this facility's executable, token file and
//! certificate), reads their states and cancels them. Submissions go
//! through [`crate::batch::ledger`], so a resent or interrupted one is
//! never submitted twice. Where compute nodes cannot reach the server, the
//! agent relays their connections ([`relay`]).

pub mod relay;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::Message;

use crate::batch::ledger::{self, Submitted};
use crate::batch::Scheduler;
use crate::site::SiteConfig;
use crate::wsclient::ConnectError;
use wire::{FromAgent, PilotReach, ToAgent, AGENT_PROTOCOL};

pub struct AgentOptions {
    pub site: SiteConfig,
    /// The server's URL as this machine reaches it.
    pub url: String,
    pub token: String,
    pub trust: Option<Arc<crate::tls::Trust>>,
    /// Job directories: one per queue and number.
    pub dir: PathBuf,
    /// How the pilots of submitted jobs reach the server.
    pub reach: PilotReach,
}

/// Runs until the server refuses the agent (wrong token, certificate,
/// protocol, site) or the process is stopped; a lost connection is
/// retried without end, since the facility's jobs outlive it.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let sched = Scheduler::for_site(opts.site.scheduler).ok_or_else(|| {
        anyhow::anyhow!(
            "site `{}` has no batch scheduler (scheduler = \"local\"): an agent runs a \
             facility's PBS or Slurm; start pilots there with `beamflow pilot`",
            opts.site.name
        )
    })?;
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", opts.dir.display()))?;
    let url = crate::wsclient::ws_url(&opts.url, "/api/agent");
    let worker = Arc::new(Worker {
        sched,
        dir: opts.dir.clone(),
        reach: opts.reach.clone(),
        submitting: Mutex::new(()),
    });
    let hello = serde_json::to_string(&FromAgent::Hello {
        protocol: AGENT_PROTOCOL,
        version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::host::hostname(),
        site: Box::new(opts.site.clone()),
    })?;
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    loop {
        match crate::wsclient::connect(&url, opts.trust.as_ref(), &opts.token).await {
            Ok(ws) => {
                let (mut sink, mut stream) = ws.split();
                if sink
                    .send(Message::Text(hello.clone().into()))
                    .await
                    .is_err()
                {
                    continue;
                }
                match first_answer(&mut stream).await {
                    Answer::Welcome => {}
                    Answer::Refused(reason) => {
                        anyhow::bail!("the server at {} refused this agent: {reason}", opts.url)
                    }
                    Answer::Lost(why) => {
                        tracing::warn!("the server at {} closed the connection: {why}", opts.url);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
                tracing::info!(
                    "agent for site `{}` connected to {}",
                    opts.site.name,
                    opts.url
                );
                backoff = Duration::from_millis(200);
                warned = false;
                let (tx, mut rx) = mpsc::unbounded_channel::<FromAgent>();
                let writer = tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        let Ok(text) = serde_json::to_string(&m) else {
                            continue;
                        };
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(frame) = stream.next().await {
                    match frame {
                        Ok(Message::Text(t)) => match wire::decode_to_agent(&t) {
                            Ok(m) => worker.clone().handle(m, tx.clone()),
                            Err(e) => {
                                tracing::warn!("dropping a malformed frame from the server: {e}")
                            }
                        },
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                writer.abort();
                tracing::warn!("lost the server at {}; reconnecting", opts.url);
            }
            Err(ConnectError::Fatal(msg)) => anyhow::bail!(msg),
            Err(ConnectError::Retry(msg)) => {
                if !warned {
                    tracing::warn!("cannot reach the server ({msg}); retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Answer {
    Welcome,
    Refused(String),
    Lost(String),
}

/// The server's answer to the hello.
async fn first_answer<S>(stream: &mut S) -> Answer
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match wire::decode_to_agent(&t) {
            Ok(ToAgent::Welcome) => Answer::Welcome,
            Ok(ToAgent::Refused { reason }) => Answer::Refused(reason),
            Ok(other) => Answer::Lost(format!("expected welcome, got {other:?}")),
            Err(e) => Answer::Lost(format!("bad frame: {e}")),
        },
        Ok(Some(Ok(_))) => Answer::Lost("expected a text frame".into()),
        Ok(Some(Err(e))) => Answer::Lost(e.to_string()),
        Ok(None) => Answer::Lost("closed".into()),
        Err(_) => Answer::Lost("no answer to hello within 30 s".into()),
    }
}

/// Runs the scheduler's commands; answers go back on the connection that
/// asked (an answer whose connection is gone is asked for again).
struct Worker {
    sched: Scheduler,
    dir: PathBuf,
    reach: PilotReach,
    /// One submission at a time: a resend never races its original.
    submitting: Mutex<()>,
}

impl Worker {
    fn handle(self: Arc<Self>, m: ToAgent, tx: mpsc::UnboundedSender<FromAgent>) {
        tokio::spawn(async move {
            let answer = match m {
                ToAgent::Welcome | ToAgent::Refused { .. } => return,
                ToAgent::Submit(s) => {
                    let req = s.job_request(&self.dir, &self.reach);
                    let result = {
                        let _one = self.submitting.lock().await;
                        ledger::submit_once(self.sched, &req).await
                    };
                    match &result {
                        Ok(Submitted::New(id)) => {
                            tracing::info!("queue {} #{}: submitted job {id}", s.queue, s.number)
                        }
                        Ok(Submitted::Known(id)) => tracing::info!(
                            "queue {} #{}: job {id} was submitted before",
                            s.queue,
                            s.number
                        ),
                        Err(e) => tracing::warn!("queue {} #{}: {e}", s.queue, s.number),
                    }
                    FromAgent::Submitted {
                        queue: s.queue,
                        number: s.number,
                        dir: req.dir.display().to_string(),
                        known: matches!(result, Ok(Submitted::Known(_))),
                        result: result.map(|r| r.id().to_string()),
                    }
                }
                ToAgent::Status { queue, jobs } => FromAgent::Status {
                    queue,
                    result: self.sched.states(&jobs).await,
                    asked: jobs,
                },
                ToAgent::Cancel { queue, jobs } => FromAgent::Cancelled {
                    queue,
                    error: self.sched.cancel_all(&jobs).await.err(),
                    jobs,
                },
            };
            let _ = tx.send(answer);
        });
    }
}
