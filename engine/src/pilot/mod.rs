//! `beamflow pilot`: the worker inside a batch allocation (or on a laptop).
//!
//! One task owns the pilot's state: the queue of prefetched tasks, the running
//! ones, and results the server has not acknowledged yet. A connection task
//! keeps one WebSocket to the server and reconnects with backoff when it
//! drops; tasks keep running meanwhile and their results are sent again after
//! the reconnect, so a server restart loses nothing and runs nothing twice.

pub mod job;
pub mod launch;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

use crate::actions::{self, Cancel, Grant};
use crate::protocol::{
    FromPilot, Outcome, PilotInfo, TaskResult, TaskSpec, ToPilot, PROTOCOL_VERSION,
};
use crate::resources::capacity::{Capacity, Charge};
use crate::resources::Resources;
use crate::site::TransferPolicy;
use crate::util::now_us;
use launch::{Launcher, LauncherKind};

/// Tasks a pilot holds beyond its free resources. Enough that short tasks never
/// wait for a round trip to the server; few enough that long tasks do not pile
/// up on one pilot while another idles.
pub const DEFAULT_PREFETCH: u32 = 16;

/// How long a task's death by SIGTERM/SIGKILL/SIGHUP waits for the pilot's own.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// A task that died of a signal a batch system sends when it ends a job.
fn killed_by_job_end(r: &TaskResult) -> bool {
    r.outcome == Outcome::Failed
        && matches!(
            r.exit_code,
            Some(c) if c == 128 + libc::SIGTERM || c == 128 + libc::SIGKILL || c == 128 + libc::SIGHUP
        )
}

#[derive(Clone, Debug)]
pub struct PilotOptions {
    pub url: String,
    /// The certificate a wss:// server must present (see [`crate::tls`]).
    pub trust: Option<Arc<crate::tls::Trust>>,
    pub token: String,
    /// Where the token came from: read again before each reconnect, so a
    /// rotated token reaches a running pilot.
    pub token_file: Option<std::path::PathBuf>,
    pub name: Option<String>,
    pub cpus: Option<u32>,
    pub gpus: Option<Vec<u32>>,
    pub memory_mb: Option<u64>,
    pub targets: Option<Vec<String>>,
    /// Tasks accepted beyond free resources, so the next starts without a round trip.
    pub prefetch: Option<u32>,
    /// Exit after this long with nothing to do.
    pub idle_timeout: Option<Duration>,
    /// Length of the allocation, when not learned from the batch system.
    pub walltime: Option<Duration>,
    /// When the allocation ends (Unix seconds), as the job script computed it.
    pub walltime_end: Option<i64>,
    /// The reservation this pilot's job runs in.
    pub reservation: Option<String>,
    /// The site this pilot runs at, when not the server's own.
    pub site: Option<String>,
    /// The pilot's job may be preempted.
    pub preemptable: bool,
    /// The variable that gives a task its GPUs (default `CUDA_VISIBLE_DEVICES`).
    pub gpu_env: Option<String>,
    /// Stop taking work this long before the walltime ends.
    pub drain_margin: Duration,
    /// Give up when the server stays unreachable this long.
    pub server_lost_timeout: Duration,
    /// The nodes this pilot holds and how it starts steps across them.
    pub nodes: NodeOptions,
}

/// Which nodes a pilot holds. By default its own; with `span_job` every
/// node of its batch job, or those named in `hosts` (its own first), and
/// steps asking for several nodes start through `launcher`.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    pub hosts: Option<Vec<String>>,
    pub span_job: bool,
    /// Default: [`LauncherKind::detect`].
    pub launcher: Option<LauncherKind>,
    /// The site's launcher flags (CPU binding, GPU affinity).
    pub launcher_flags: Option<String>,
}

enum Ev {
    /// A connection is up: where to send, and a signal raised once a frame
    /// holding `bye` has been written.
    Connected(mpsc::UnboundedSender<Vec<FromPilot>>, Arc<Notify>),
    Disconnected,
    Frame(Vec<ToPilot>),
    Done {
        charge: Charge,
        gpus: Vec<u32>,
        /// Other nodes lent to the attempt (names may repeat).
        others: Vec<String>,
        result: TaskResult,
    },
    Fatal(String),
}

struct Running {
    cancel: Cancel,
}

struct Pilot {
    opts: PilotOptions,
    info: PilotInfo,
    id: Option<u64>,
    out: Option<mpsc::UnboundedSender<Vec<FromPilot>>>,
    said_bye: Option<Arc<Notify>>,
    ev: mpsc::UnboundedSender<Ev>,
    queue: VecDeque<TaskSpec>,
    running: HashMap<u64, Running>,
    unacked: BTreeMap<u64, TaskResult>,
    /// Failures of tasks killed by a signal the pilot did not send, held back
    /// for [`SIGNAL_GRACE`]: when the batch system ends the job it signals
    /// the tasks and the pilot together, and the pilot's own signal, which
    /// makes the server requeue them without using a retry, may arrive second.
    signalled: Vec<(Instant, TaskResult)>,
    gpu_env: Arc<str>,
    cap: Capacity,
    free_gpus: Vec<u32>,
    /// This node's name, and the other nodes not lent to a step.
    head: String,
    free_hosts: Vec<String>,
    launcher: Launcher,
    policy: TransferPolicy,
    heartbeat: Duration,
    last_heartbeat: Instant,
    idle_since: Instant,
    disconnected_since: Option<Instant>,
    draining: bool,
    done: u64,
}

/// Runs a pilot until it is idle, drained, told to stop, or loses the server.
pub async fn run(opts: PilotOptions) -> anyhow::Result<()> {
    let started = now_us();
    let gpus = opts.gpus.clone().unwrap_or_else(crate::host::gpus);
    let mut hosts = match (&opts.nodes.hosts, opts.nodes.span_job) {
        (Some(h), _) if !h.is_empty() => h.clone(),
        (_, true) => launch::job_hosts()?,
        _ => vec![crate::host::hostname()],
    };
    let head = hosts.remove(0);
    let launcher = Launcher::new(
        opts.nodes.launcher.unwrap_or_else(LauncherKind::detect),
        opts.nodes.launcher_flags.as_deref(),
    )?;
    let res = Resources {
        cpus: opts.cpus.unwrap_or_else(crate::host::cpus),
        gpus: gpus.len() as u32,
        memory_mb: opts.memory_mb.unwrap_or_else(crate::host::memory_mb),
        nodes: 1 + hosts.len() as u32,
        ranks_per_node: 1,
    };
    let targets = opts.targets.clone().unwrap_or_else(|| {
        let mut t = vec![
            "cpu".to_string(),
            "edge".to_string(),
            "realtime".to_string(),
        ];
        if !gpus.is_empty() {
            t.push("gpu".to_string());
        }
        t
    });
    let host = crate::host::hostname();
    let info = PilotInfo {
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        host,
        resources: res,
        gpu_ids: gpus.clone(),
        targets,
        walltime_end_us: job::walltime_end_us(opts.walltime, opts.walltime_end, started),
        reservation: opts.reservation.clone().or_else(job::reservation),
        batch_job: job::batch_job(),
        site: opts.site.clone(),
        preemptable: opts.preemptable,
        prefetch: opts.prefetch.unwrap_or(DEFAULT_PREFETCH),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    tracing::info!(
        "pilot {} offers {} (gpus {:?}) for targets {:?}",
        info.name,
        res,
        gpus,
        info.targets
    );
    match opts.idle_timeout {
        Some(t) => tracing::info!(
            "leaves after {} without work (--idle-timeout 0s: stays)",
            crate::util::fmt_secs(t.as_secs_f64())
        ),
        None => tracing::info!("stays without work until stopped"),
    }
    if !hosts.is_empty() {
        tracing::info!(
            "holding nodes {head} (this one), {}; steps on several nodes start with {:?}",
            hosts.join(", "),
            launcher.kind
        );
    }
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let conn = tokio::spawn(connection(
        crate::wsclient::ws_url(&opts.url, "/api/pilot"),
        opts.trust.clone(),
        opts.token.clone(),
        opts.token_file.clone(),
        ev_tx.clone(),
    ));
    let gpu_env: Arc<str> = Arc::from(
        opts.gpu_env
            .clone()
            .unwrap_or_else(|| "CUDA_VISIBLE_DEVICES".to_string()),
    );
    let mut p = Pilot {
        opts,
        info,
        id: None,
        out: None,
        said_bye: None,
        ev: ev_tx,
        queue: VecDeque::new(),
        running: HashMap::new(),
        unacked: BTreeMap::new(),
        signalled: Vec::new(),
        gpu_env,
        cap: Capacity::new(res),
        free_gpus: gpus,
        head,
        free_hosts: hosts,
        launcher,
        policy: TransferPolicy::default(),
        heartbeat: Duration::from_secs(2),
        last_heartbeat: Instant::now(),
        idle_since: Instant::now(),
        disconnected_since: Some(Instant::now()),
        draining: false,
        done: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = loop {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(Ev::Fatal(msg)) => break Err(anyhow::anyhow!(msg)),
                Some(ev) => p.handle(ev),
                None => break Ok(()),
            },
            _ = tick.tick() => {
                if let Some(r) = p.tick() {
                    break r;
                }
            }
            _ = tokio::signal::ctrl_c() => break p.shutdown("interrupted").await,
            _ = sigterm.recv() => break p.shutdown("terminated").await,
        }
    };
    // A `bye` was queued on every way out: let it reach the server, so the
    // pilot is recorded as having left rather than as lost.
    if let (Some(_), Some(flag)) = (&p.out, &p.said_bye) {
        let _ = tokio::time::timeout(Duration::from_secs(2), flag.notified()).await;
    }
    conn.abort();
    tracing::info!("pilot exits after {} tasks", p.done);
    result
}

impl Pilot {
    fn send(&self, msgs: Vec<FromPilot>) {
        if let Some(out) = &self.out {
            let _ = out.send(msgs);
        }
    }

    /// Running attempts first, then queued ones in the order they will start,
    /// then finished ones: the server re-charges resources in this order.
    fn held(&self) -> Vec<u64> {
        self.running
            .keys()
            .copied()
            .chain(self.signalled.iter().map(|(_, r)| r.attempt))
            .chain(self.queue.iter().map(|t| t.attempt))
            .chain(self.unacked.keys().copied())
            .collect()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Connected(out, said_bye) => {
                self.said_bye = Some(said_bye);
                let mut msgs = vec![FromPilot::Hello {
                    protocol: PROTOCOL_VERSION,
                    pilot_id: self.id,
                    info: self.info.clone(),
                    held: self.held(),
                }];
                msgs.extend(self.unacked.values().cloned().map(FromPilot::Finished));
                if self.draining {
                    msgs.push(FromPilot::Draining {
                        reason: "walltime ending".into(),
                    });
                }
                let _ = out.send(msgs);
                self.out = Some(out);
                self.disconnected_since = None;
            }
            Ev::Disconnected => {
                if self.out.take().is_some() {
                    tracing::warn!(
                        "lost the server; {} tasks keep running, reconnecting",
                        self.running.len()
                    );
                }
                self.disconnected_since.get_or_insert_with(Instant::now);
            }
            Ev::Frame(msgs) => {
                for m in msgs {
                    self.server_msg(m);
                }
                self.try_start();
            }
            Ev::Done {
                charge,
                gpus,
                others,
                result,
            } => {
                self.running.remove(&result.attempt);
                self.cap.give(&charge);
                self.free_gpus.extend(gpus);
                self.free_hosts.extend(others);
                self.done += 1;
                if killed_by_job_end(&result) {
                    self.signalled.push((Instant::now(), result));
                } else {
                    self.unacked.insert(result.attempt, result.clone());
                    self.send(vec![FromPilot::Finished(result)]);
                }
                self.try_start();
                if self.queue.is_empty() && self.running.is_empty() {
                    self.idle_since = Instant::now();
                }
            }
            Ev::Fatal(_) => {}
        }
    }

    fn server_msg(&mut self, m: ToPilot) {
        match m {
            ToPilot::Welcome {
                pilot_id,
                heartbeat_s,
                transfer,
                ..
            } => {
                if self.id != Some(pilot_id) {
                    tracing::info!("registered as pilot {pilot_id}");
                }
                self.id = Some(pilot_id);
                self.heartbeat = Duration::from_secs_f64(heartbeat_s.max(0.1));
                self.policy = transfer;
            }
            ToPilot::Tasks { tasks } => {
                if self.draining {
                    let ids = tasks.iter().map(|t| t.attempt).collect();
                    self.send(vec![FromPilot::Returned { attempts: ids }]);
                } else {
                    self.queue.extend(tasks);
                }
            }
            ToPilot::Cancel { attempts } => {
                for a in attempts {
                    if let Some(pos) = self.queue.iter().position(|t| t.attempt == a) {
                        self.queue.remove(pos);
                        let now = now_us();
                        let r = TaskResult {
                            attempt: a,
                            outcome: Outcome::Cancelled,
                            outputs: serde_json::json!({}),
                            error: Some("cancelled before it started".into()),
                            exit_code: None,
                            started_us: now,
                            finished_us: now,
                        };
                        self.unacked.insert(a, r.clone());
                        self.send(vec![FromPilot::Finished(r)]);
                    } else if let Some(r) = self.running.get(&a) {
                        r.cancel.cancel();
                    }
                }
            }
            ToPilot::Ack { attempts } => {
                for a in attempts {
                    self.unacked.remove(&a);
                }
            }
            ToPilot::Refused { reason } => {
                if reason.starts_with("declared lost") {
                    // The server gave our work to others: stop it and start afresh.
                    tracing::warn!("server {reason}; dropping held work and registering anew");
                    for r in self.running.values() {
                        r.cancel.cancel();
                    }
                    self.queue.clear();
                    self.unacked.clear();
                    self.id = None;
                } else {
                    let _ = self
                        .ev
                        .send(Ev::Fatal(format!("server refused this pilot: {reason}")));
                }
            }
        }
    }

    /// Starts queued tasks, in order, while a variant of the head fits.
    fn try_start(&mut self) {
        while let Some(front) = self.queue.front() {
            let Some(charge) = self.cap.place(&front.resources) else {
                break;
            };
            let spec = self.queue.pop_front().expect("front exists");
            self.cap.take(&charge);
            let variant = charge.variant;
            // A step on several nodes binds its devices through the
            // launcher's flags; one on this node gets GPU indices.
            let (gpus, others, hosts) = if charge.nodes() > 1 {
                let others: Vec<String> = self.free_hosts.drain(..charge.others as usize).collect();
                let mut hosts = Vec::with_capacity(charge.nodes() as usize);
                if charge.head {
                    hosts.push(self.head.clone());
                }
                hosts.extend(others.iter().cloned());
                (vec![], others, hosts)
            } else {
                let n = (variant.gpus as usize).min(self.free_gpus.len());
                (
                    self.free_gpus.drain(..n).collect::<Vec<u32>>(),
                    vec![],
                    vec![],
                )
            };
            let cancel = Cancel::default();
            self.running.insert(
                spec.attempt,
                Running {
                    cancel: cancel.clone(),
                },
            );
            self.send(vec![FromPilot::Started {
                attempt: spec.attempt,
                at_us: now_us(),
            }]);
            let grant = Grant {
                cpus: variant.cpus,
                gpus: gpus.clone(),
                gpu_env: self.gpu_env.clone(),
                launch: (!hosts.is_empty()).then(|| self.launcher.argv(&hosts, &variant)),
                hosts,
                ranks_per_node: variant.ranks_per_node,
            };
            let policy = self.policy.clone();
            let ev = self.ev.clone();
            tokio::spawn(async move {
                let result = actions::execute(&spec, &grant, &policy, &cancel).await;
                let _ = ev.send(Ev::Done {
                    charge,
                    gpus,
                    others,
                    result,
                });
            });
        }
    }

    /// Periodic duties; `Some` ends the pilot.
    fn tick(&mut self) -> Option<anyhow::Result<()>> {
        let now = Instant::now();
        // No signal of our own came: these really failed.
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.signalled)
            .into_iter()
            .partition(|(at, _)| now.duration_since(*at) >= SIGNAL_GRACE);
        self.signalled = keep;
        for (_, r) in due {
            self.unacked.insert(r.attempt, r.clone());
            self.send(vec![FromPilot::Finished(r)]);
        }
        if self.out.is_some() && now.duration_since(self.last_heartbeat) >= self.heartbeat {
            self.last_heartbeat = now;
            self.send(vec![FromPilot::Heartbeat]);
        }
        if let Some(since) = self.disconnected_since {
            if now.duration_since(since) >= self.opts.server_lost_timeout {
                for r in self.running.values() {
                    r.cancel.cancel();
                }
                return Some(Err(anyhow::anyhow!(
                    "the server at {} was unreachable for {:?}; giving up",
                    self.opts.url,
                    self.opts.server_lost_timeout
                )));
            }
        }
        let busy = !self.queue.is_empty() || !self.running.is_empty() || !self.signalled.is_empty();
        if let Some(end) = self.info.walltime_end_us {
            let left = end - now_us();
            if !self.draining && left <= self.opts.drain_margin.as_micros() as i64 {
                self.draining = true;
                tracing::info!("walltime ends in {}s: draining", left / 1_000_000);
                let returned: Vec<u64> = self.queue.drain(..).map(|t| t.attempt).collect();
                self.send(vec![
                    FromPilot::Draining {
                        reason: "walltime ending".into(),
                    },
                    FromPilot::Returned { attempts: returned },
                ]);
            }
            if self.draining
                && self.running.is_empty()
                && self.signalled.is_empty()
                && (self.unacked.is_empty() || left <= 0)
            {
                self.send(vec![FromPilot::Bye {
                    reason: "walltime reached".into(),
                }]);
                return Some(Ok(()));
            }
        }
        if let Some(idle) = self.opts.idle_timeout {
            if !busy
                && self.unacked.is_empty()
                && self.out.is_some()
                && now.duration_since(self.idle_since) >= idle
            {
                tracing::info!("idle for {idle:?}: leaving");
                self.send(vec![FromPilot::Bye {
                    reason: format!("idle for {}s", idle.as_secs()),
                }]);
                return Some(Ok(()));
            }
        }
        if busy {
            self.idle_since = now;
        }
        None
    }

    /// Stops on a signal: queued work goes back, running work is cancelled and
    /// reported (the server requeues it without counting a try).
    async fn shutdown(&mut self, why: &str) -> anyhow::Result<()> {
        tracing::info!("{why}: returning queued tasks and stopping running ones");
        let returned: Vec<u64> = self.queue.drain(..).map(|t| t.attempt).collect();
        self.send(vec![
            FromPilot::Draining {
                reason: why.to_string(),
            },
            FromPilot::Returned { attempts: returned },
        ]);
        for r in self.running.values() {
            r.cancel.cancel();
        }
        self.send(vec![FromPilot::Bye {
            reason: why.to_string(),
        }]);
        Ok(())
    }
}

/// Keeps one WebSocket open, reconnecting with backoff (0.1 s doubling to 2 s).
async fn connection(
    url: String,
    trust: Option<Arc<crate::tls::Trust>>,
    mut token: String,
    token_file: Option<std::path::PathBuf>,
    ev: mpsc::UnboundedSender<Ev>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        if let Some(t) = token_file
            .as_deref()
            .and_then(|f| crate::home::read_token(f).ok())
        {
            if !t.is_empty() {
                token = t;
            }
        }
        match crate::wsclient::connect(&url, trust.as_ref(), &token).await {
            Ok(ws) => {
                backoff = Duration::from_millis(100);
                warned = false;
                let (mut sink, mut stream) = ws.split();
                let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<FromPilot>>();
                let said_bye = Arc::new(Notify::new());
                if ev.send(Ev::Connected(out_tx, said_bye.clone())).is_err() {
                    return;
                }
                let writer = tokio::spawn(async move {
                    while let Some(mut batch) = out_rx.recv().await {
                        while let Ok(more) = out_rx.try_recv() {
                            batch.extend(more);
                        }
                        coalesce(&mut batch);
                        let bye = batch.iter().any(|m| matches!(m, FromPilot::Bye { .. }));
                        let Ok(text) = serde_json::to_string(&batch) else {
                            break;
                        };
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                        if bye {
                            said_bye.notify_one();
                        }
                    }
                    let _ = sink.close().await;
                });
                while let Some(frame) = stream.next().await {
                    match frame {
                        Ok(Message::Text(t)) => match crate::protocol::decode_to_pilot(&t) {
                            Ok(msgs) => {
                                if ev.send(Ev::Frame(msgs)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!("dropping malformed frame from server: {e}"),
                        },
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                writer.abort();
                if ev.send(Ev::Disconnected).is_err() {
                    return;
                }
            }
            Err(crate::wsclient::ConnectError::Fatal(msg)) => {
                let _ = ev.send(Ev::Fatal(msg));
                return;
            }
            Err(crate::wsclient::ConnectError::Retry(msg)) => {
                if !warned {
                    tracing::warn!("cannot reach the server ({msg}); retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A task that started and finished within one frame needs no `started`.
fn coalesce(batch: &mut Vec<FromPilot>) {
    let finished: std::collections::HashSet<u64> = batch
        .iter()
        .filter_map(|m| match m {
            FromPilot::Finished(r) => Some(r.attempt),
            _ => None,
        })
        .collect();
    if !finished.is_empty() {
        batch.retain(
            |m| !matches!(m, FromPilot::Started { attempt, .. } if finished.contains(attempt)),
        );
    }
}
