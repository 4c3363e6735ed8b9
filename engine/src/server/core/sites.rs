//! Sites whose scheduler an agent runs: which agent is connected, what the
//! core asked it and has no answer to yet.
//!
//! Submissions sent to an agent stay here until answered. When the agent
//! goes, they wait; when it (or a restarted one) comes back they are sent
//! again, and the agent's ledger answers a job it had submitted with its id
//! rather than submitting it twice. A site without its agent submits
//! nothing: the allocation manager passes its demand to other sites'
//! queues.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Core, Reply};
use crate::agent::wire::{FromAgent, Submit, ToAgent};
use crate::alloc::Command;
use crate::api::{AgentInfo, SiteInfo};
use crate::site::SiteConfig;
use crate::store::Op;
use crate::util::now_us;

pub enum AgentMsg {
    Hello {
        conn: u64,
        host: String,
        version: String,
        site: Box<SiteConfig>,
        tx: mpsc::UnboundedSender<ToAgent>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    From {
        conn: u64,
        msg: FromAgent,
    },
    Gone {
        conn: u64,
    },
    List {
        reply: Reply<Vec<SiteInfo>>,
    },
}

/// What the store keeps of a site run by an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    config: SiteConfig,
    host: String,
    version: String,
    last_seen_us: i64,
}

struct Link {
    conn: u64,
    tx: mpsc::UnboundedSender<ToAgent>,
    since_us: i64,
}

struct AgentSite {
    stored: Stored,
    link: Option<Link>,
    /// Submissions sent and not answered, by (queue, number).
    submits: BTreeMap<(u64, u32), Submit>,
    /// Queues with a status request in flight.
    polls: BTreeSet<u64>,
}

#[derive(Default)]
pub(super) struct Sites {
    by_name: BTreeMap<String, AgentSite>,
}

impl Sites {
    /// No site is run by an agent.
    pub(super) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The config an agent sent for `site`, if an agent runs it.
    pub(super) fn config(&self, site: &str) -> Option<&SiteConfig> {
        self.by_name.get(site).map(|s| &s.stored.config)
    }

    /// Whether an agent runs `site` (connected or not).
    pub(super) fn by_agent(&self, site: &str) -> bool {
        self.by_name.contains_key(site)
    }

    fn site_of_conn(&self, conn: u64) -> Option<String> {
        self.by_name
            .iter()
            .find(|(_, s)| s.link.as_ref().is_some_and(|l| l.conn == conn))
            .map(|(n, _)| n.clone())
    }
}

/// Restores the sites agents ran before the restart; none is connected yet.
pub(super) fn restore(core: &mut Core) -> anyhow::Result<()> {
    for (name, data) in core.store.read(crate::store::sites)? {
        let stored: Stored = serde_json::from_str(&data)
            .map_err(|e| anyhow::anyhow!("stored site `{name}`: {e}"))?;
        core.alloc.set_offline(
            &name,
            Some(format!(
                "the agent of site `{name}` has not connected since the server started"
            )),
        );
        core.sites.by_name.insert(
            name,
            AgentSite {
                stored,
                link: None,
                submits: BTreeMap::new(),
                polls: BTreeSet::new(),
            },
        );
    }
    Ok(())
}

impl Core {
    pub(super) fn agent_msg(&mut self, m: AgentMsg) {
        match m {
            AgentMsg::Hello {
                conn,
                host,
                version,
                site,
                tx,
                reply,
            } => {
                let r = self.agent_hello(conn, host, version, *site, tx);
                let _ = reply.send(r);
            }
            AgentMsg::From { conn, msg } => self.agent_answer(conn, msg),
            AgentMsg::Gone { conn } => self.agent_gone(conn),
            AgentMsg::List { reply } => {
                let r = Ok(self.site_list());
                self.reply(reply, r);
            }
        }
    }

    fn agent_hello(
        &mut self,
        conn: u64,
        host: String,
        version: String,
        config: SiteConfig,
        tx: mpsc::UnboundedSender<ToAgent>,
    ) -> Result<(), String> {
        let name = config.name.clone();
        if name == self.cfg.site.name {
            return Err(format!(
                "site `{name}` is this server's own site (its scheduler runs here); \
                 give the agent's site config another name"
            ));
        }
        if crate::batch::Scheduler::for_site(config.scheduler).is_none() {
            return Err(format!(
                "site `{name}` has no batch scheduler (scheduler = \"local\"): an agent runs \
                 PBS or Slurm"
            ));
        }
        let now = now_us();
        let stored = Stored {
            config,
            host: host.clone(),
            version,
            last_seen_us: now,
        };
        self.batch.ops.push(Op::PutSite {
            name: name.clone(),
            data: serde_json::to_string(&stored).unwrap_or_default(),
            at: now,
        });
        let s = self
            .sites
            .by_name
            .entry(name.clone())
            .or_insert_with(|| AgentSite {
                stored: stored.clone(),
                link: None,
                submits: BTreeMap::new(),
                polls: BTreeSet::new(),
            });
        s.stored = stored;
        if s.link.is_some() {
            // A restarted agent whose old connection is not closed yet:
            // the newer one wins (dropping the sender closes the old).
            tracing::warn!("site `{name}`: a new agent on {host} replaces the connected one");
        }
        // Polls sent on an older connection are answered there or never.
        let polls = std::mem::take(&mut s.polls);
        s.link = Some(Link {
            conn,
            tx: tx.clone(),
            since_us: now,
        });
        for q in polls {
            self.alloc.poll_abandoned(q);
        }
        let s = self.sites.by_name.get(&name).expect("inserted above");
        for sub in s.submits.values() {
            let _ = tx.send(ToAgent::Submit(Box::new(sub.clone())));
        }
        tracing::info!(
            "agent for site `{name}` connected from {host}; {} submission{} resent",
            s.submits.len(),
            if s.submits.len() == 1 { "" } else { "s" }
        );
        self.alloc.set_offline(&name, None);
        Ok(())
    }

    fn agent_gone(&mut self, conn: u64) {
        let Some(name) = self.sites.site_of_conn(conn) else {
            return;
        };
        let now = now_us();
        let s = self.sites.by_name.get_mut(&name).expect("found above");
        s.link = None;
        s.stored.last_seen_us = now;
        let polls = std::mem::take(&mut s.polls);
        self.batch.ops.push(Op::PutSite {
            name: name.clone(),
            data: serde_json::to_string(&s.stored).unwrap_or_default(),
            at: now,
        });
        for q in polls {
            self.alloc.poll_abandoned(q);
        }
        tracing::warn!("the agent of site `{name}` disconnected");
        self.alloc.set_offline(
            &name,
            Some(format!(
                "the agent of site `{name}` is not connected (last seen {})",
                crate::util::fmt_ts(now)
            )),
        );
    }

    fn agent_answer(&mut self, conn: u64, msg: FromAgent) {
        let Some(name) = self.sites.site_of_conn(conn) else {
            return;
        };
        let now = now_us();
        let s = self.sites.by_name.get_mut(&name).expect("found above");
        match msg {
            FromAgent::Hello { .. } => {}
            FromAgent::Submitted {
                queue,
                number,
                dir,
                result,
                known,
            } => {
                if s.submits.remove(&(queue, number)).is_none() {
                    return;
                }
                if known {
                    tracing::info!(
                        "site `{name}`: queue {queue} #{number} had been submitted before"
                    );
                }
                self.alloc.submitted(queue, number, &dir, result, now);
            }
            FromAgent::Status {
                queue,
                asked,
                result,
            } => {
                if s.polls.remove(&queue) {
                    self.alloc.statuses(queue, &asked, result, now);
                }
            }
            FromAgent::Cancelled { queue, jobs, error } => {
                if let Some(e) = error {
                    tracing::warn!(
                        "allocation queue {queue}: cancelling {jobs:?} at `{name}`: {e}"
                    );
                }
            }
        }
    }

    /// Hands a manager command for a site an agent runs to that agent (or
    /// keeps a submission until it connects).
    pub(super) fn agent_command(&mut self, c: Command, spec: &crate::alloc::QueueSpec) {
        let site = spec.target.site.clone();
        let Some(s) = self.sites.by_name.get_mut(&site) else {
            return;
        };
        let send = |s: &AgentSite, m: ToAgent| {
            if let Some(l) = &s.link {
                let _ = l.tx.send(m);
            }
        };
        match c {
            Command::Submit {
                queue,
                number,
                nodes,
                walltime_s,
                idle_timeout_s,
            } => {
                let sub = submit_of(queue, number, nodes, walltime_s, idle_timeout_s, spec);
                send(s, ToAgent::Submit(Box::new(sub.clone())));
                s.submits.insert((queue, number), sub);
            }
            Command::Status { queue, jobs } => {
                if s.link.is_some() {
                    s.polls.insert(queue);
                    send(s, ToAgent::Status { queue, jobs });
                } else {
                    self.alloc.poll_abandoned(queue);
                }
            }
            Command::Cancel { queue, jobs } => {
                if s.link.is_none() {
                    tracing::warn!(
                        "allocation queue {queue}: cannot cancel {jobs:?}: the agent of site \
                         `{site}` is not connected; cancel them there"
                    );
                }
                send(s, ToAgent::Cancel { queue, jobs });
            }
        }
    }

    /// Every site: this server's own, and those agents run.
    fn site_list(&self) -> Vec<SiteInfo> {
        let queues = self.alloc.info(0);
        let row = |config: &SiteConfig, run_by: &str, agent: Option<AgentInfo>| {
            let mine: Vec<_> = queues
                .iter()
                .filter(|q| q.spec.target.site == config.name)
                .collect();
            SiteInfo {
                name: config.name.clone(),
                scheduler: config.scheduler.name().to_string(),
                description: config.description.clone(),
                run_by: run_by.to_string(),
                agent,
                targets: config.targets.keys().cloned().collect(),
                queues: mine.iter().map(|q| q.id).collect(),
                jobs_queued: mine.iter().map(|q| q.queued_jobs).sum(),
                jobs_running: mine.iter().map(|q| q.running_jobs).sum(),
                pilots: mine
                    .iter()
                    .flat_map(|q| &q.jobs)
                    .map(|j| j.pilots.len() as u32)
                    .sum(),
                config: config.clone(),
            }
        };
        let mut out = vec![row(&self.cfg.site, "server", None)];
        for s in self.sites.by_name.values() {
            let agent = AgentInfo {
                host: s.stored.host.clone(),
                version: s.stored.version.clone(),
                connected: s.link.is_some(),
                since_us: s
                    .link
                    .as_ref()
                    .map(|l| l.since_us)
                    .unwrap_or(s.stored.last_seen_us),
            };
            out.push(row(&s.stored.config, "agent", Some(agent)));
        }
        out
    }
}

/// A manager's submission as the wire carries it (also how this server
/// submits to its own site).
pub(super) fn submit_of(
    queue: u64,
    number: u32,
    nodes: u32,
    walltime_s: u64,
    idle_timeout_s: u64,
    spec: &crate::alloc::QueueSpec,
) -> Submit {
    Submit {
        queue,
        number,
        name: format!("bf-{}-{queue}-{number}", spec.target.target),
        nodes,
        walltime_s,
        idle_timeout_s,
        reservation: spec.reservation.as_ref().map(|r| r.name.clone()),
        serves: spec.serves(),
        target: spec.target.clone(),
    }
}
