//! Pilots: what each offers and holds, their connections and reconnections,
//! their messages, heartbeats, and what happens to their work when they
//! leave or are lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Core;
use crate::api::{AttemptId, AttemptState, PilotId, PilotState};
use crate::protocol::{FromPilot, PilotInfo, ToPilot};
use crate::resources::capacity::{Capacity, Charge};
use crate::resources::ResourceRequest;
use crate::store::Op;
use crate::util::now_us;

pub(super) struct Pilot {
    pub info: PilotInfo,
    /// The site it runs at: the one it names, else the server's own.
    pub site: String,
    pub conn: u64,
    /// `None` while the pilot is disconnected.
    pub tx: Option<mpsc::UnboundedSender<Vec<ToPilot>>>,
    pub last_seen: Instant,
    pub disconnected_at: Option<Instant>,
    pub draining: bool,
    /// What the attempts in capacity leave free.
    pub cap: Capacity,
    /// Attempts charged against the pilot's resources, with what each holds.
    pub in_capacity: HashMap<AttemptId, Charge>,
    /// Attempts sent ahead of free resources, in the order the pilot will start them.
    pub prefetched: VecDeque<AttemptId>,
    /// The transfer remotes its site's rules (sent in its welcome) name:
    /// a step staging from any other remote cannot get its data there.
    pub remotes: Vec<String>,
}

impl Pilot {
    /// A pilot holding nothing yet; `tx` is `None` while it is disconnected.
    /// `own_site`: where a pilot that names no site runs.
    pub fn new(
        info: PilotInfo,
        conn: u64,
        tx: Option<mpsc::UnboundedSender<Vec<ToPilot>>>,
        own_site: &str,
    ) -> Self {
        Pilot {
            disconnected_at: tx.is_none().then(Instant::now),
            cap: Capacity::new(info.resources),
            site: site_of(&info, own_site),
            info,
            conn,
            tx,
            last_seen: Instant::now(),
            draining: false,
            in_capacity: HashMap::new(),
            prefetched: VecDeque::new(),
            remotes: Vec::new(),
        }
    }

    /// Every attempt placed on this pilot, in or beyond capacity.
    pub fn held(&self) -> Vec<AttemptId> {
        self.in_capacity
            .keys()
            .chain(self.prefetched.iter())
            .copied()
            .collect()
    }

    pub fn load(&self) -> usize {
        self.in_capacity.len() + self.prefetched.len()
    }

    pub fn fitting_variant(&self, req: &ResourceRequest) -> Option<Charge> {
        self.cap.place(req)
    }

    pub fn could_ever_run(&self, req: &ResourceRequest) -> bool {
        self.cap.could_ever_run(req)
    }

    pub fn charge(&mut self, attempt: AttemptId, c: Charge) {
        self.cap.take(&c);
        self.in_capacity.insert(attempt, c);
    }

    /// Connected and taking new work.
    pub fn is_up(&self) -> bool {
        self.tx.is_some() && !self.draining
    }

    pub fn serves(&self, target: &str) -> bool {
        self.info.targets.iter().any(|t| t == target)
    }

    /// Releases what `attempt` held and moves prefetched attempts that now fit
    /// into capacity, mirroring the order in which the pilot starts them.
    pub fn release(&mut self, attempt: AttemptId, requests: &HashMap<AttemptId, ResourceRequest>) {
        if let Some(c) = self.in_capacity.remove(&attempt) {
            self.cap.give(&c);
        } else if let Some(pos) = self.prefetched.iter().position(|&a| a == attempt) {
            self.prefetched.remove(pos);
        }
        while let Some(&next) = self.prefetched.front() {
            let Some(v) = requests
                .get(&next)
                .and_then(|req| self.fitting_variant(req))
            else {
                break;
            };
            self.prefetched.pop_front();
            self.charge(next, v);
        }
    }
}

/// The site a pilot runs at: the one it names, else the server's own.
fn site_of(info: &PilotInfo, own_site: &str) -> String {
    info.site
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| own_site.to_string())
}

impl Core {
    /// After a restart: the pilots that were connected are disconnected
    /// now, and have the pilot timeout to come back under their ids with
    /// what they hold; the others are lost then, as any pilot would be.
    pub(super) fn await_pilots(&mut self) -> anyhow::Result<()> {
        let now = now_us();
        for row in self.store.read(crate::store::pilots)? {
            if matches!(row.state, PilotState::Lost | PilotState::Left) {
                continue;
            }
            let id = PilotId(row.id);
            let p = Pilot::new(row.info, 0, None, &self.cfg.site.name);
            self.pilots.insert(id, p);
            if row.state != PilotState::Disconnected {
                self.batch.ops.push(Op::PilotState {
                    id,
                    state: PilotState::Disconnected,
                    reason: Some("the server restarted".into()),
                    at: now,
                });
            }
        }
        Ok(())
    }

    pub(super) fn hello(
        &mut self,
        conn: u64,
        pilot_id: Option<PilotId>,
        info: PilotInfo,
        held: Vec<AttemptId>,
        tx: mpsc::UnboundedSender<Vec<ToPilot>>,
        reply: oneshot::Sender<PilotId>,
    ) {
        let now = now_us();
        let known = pilot_id.filter(|id| self.pilots.contains_key(id));
        let id = known.unwrap_or_else(|| {
            let id = PilotId(self.next_pilot);
            self.next_pilot += 1;
            id
        });
        let running: HashSet<AttemptId> = held.iter().copied().collect();
        let mut resend_cancels: Vec<AttemptId> = Vec::new();
        let mut stray = Vec::new();
        let mut forgotten = Vec::new();
        let info_json = serde_json::to_string(&info).unwrap_or_default();
        let name = info.name.clone();
        let host = info.host.clone();
        match self.pilots.get_mut(&id).filter(|_| known.is_some()) {
            Some(p) => {
                tracing::info!(
                    "pilot {id} ({name}) reconnected with {} attempts",
                    running.len()
                );
                p.cap = Capacity::new(info.resources);
                p.site = site_of(&info, &self.cfg.site.name);
                p.info = info;
                p.conn = conn;
                p.tx = Some(tx.clone());
                p.disconnected_at = None;
                p.last_seen = Instant::now();
                // Re-charge resources in the order the pilot runs them
                // (`held` lists running, then queued, then finished attempts).
                let ours: HashSet<AttemptId> = p.held().into_iter().collect();
                p.in_capacity.clear();
                p.prefetched.clear();
                for &a in held.iter().filter(|a| ours.contains(a)) {
                    let req = self.requests.get(&a).cloned().unwrap_or_default();
                    let fit = if p.prefetched.is_empty() {
                        p.fitting_variant(&req)
                    } else {
                        None
                    };
                    match fit {
                        Some(v) => p.charge(a, v),
                        None => p.prefetched.push_back(a),
                    }
                }
                forgotten.extend(ours.iter().filter(|a| !running.contains(a)));
                // Cancels sent while the pilot was away were dropped: send
                // them again for attempts whose run has ended.
                let ended = held.iter().filter(|a| {
                    self.attempts
                        .get(a)
                        .is_some_and(|x| x.pilot == Some(id) && !self.runs.contains_key(&x.run))
                });
                resend_cancels.extend(ended);
            }
            None => {
                if let Some(old) = pilot_id {
                    tracing::info!("pilot {old} ({name}) is unknown or was declared lost; registered as pilot {id}");
                }
                let p = Pilot::new(info, conn, Some(tx.clone()), &self.cfg.site.name);
                self.pilots.insert(id, p);
            }
        }
        // Attempts the pilot runs that are no longer its own: stop them.
        for a in &running {
            if self.attempts.get(a).and_then(|x| x.pilot) != Some(id) {
                stray.push(*a);
            }
        }
        for a in forgotten {
            // Dispatched but never received: place it again; not a try.
            self.requeue(a, AttemptState::Returned, "the pilot never received it");
        }
        stray.extend(resend_cancels);
        if !stray.is_empty() {
            self.outbox.entry(id).or_default().cancels.extend(stray);
        }
        self.batch.ops.push(Op::PutPilot {
            id,
            name,
            host,
            info: info_json,
            state: PilotState::Connected,
            at: now,
        });
        self.event(None, None, Some(id), "pilot_connected", None);
        if let Some(job) = self.pilots.get(&id).and_then(|p| p.info.batch_job.clone()) {
            let site = self.pilots.get(&id).and_then(|p| p.info.site.clone());
            self.alloc.pilot_connected(id.0, site.as_deref(), &job, now);
        }
        // A pilot at a site an agent runs moves data by that site's rules
        // (its roots, its remotes), not by the server's own.
        let transfer = self
            .pilots
            .get(&id)
            .and_then(|p| p.info.site.as_deref())
            .and_then(|site| self.sites.config(site))
            .map_or_else(|| self.cfg.site.transfer.clone(), |c| c.transfer.clone());
        if let Some(p) = self.pilots.get_mut(&id) {
            p.remotes = transfer.remotes.keys().cloned().collect();
        }
        let welcome = ToPilot::Welcome {
            pilot_id: id.0,
            server_uid: String::new(),
            heartbeat_s: self.cfg.heartbeat.as_secs_f64(),
            transfer,
        };
        self.batch.effects.push(Box::new(move || {
            let _ = tx.send(vec![welcome]);
            let _ = reply.send(id);
        }));
    }

    /// Messages from a pilot's current connection (a replaced connection's
    /// late frames are dropped).
    pub(super) fn pilot_msgs(&mut self, pilot: PilotId, conn: u64, msgs: Vec<FromPilot>) {
        let Some(p) = self.pilots.get_mut(&pilot) else {
            return;
        };
        if p.conn != conn {
            return;
        }
        p.last_seen = Instant::now();
        for m in msgs {
            self.pilot_msg(pilot, m);
        }
    }

    /// The connection closed: the pilot has until the pilot timeout to come
    /// back with what it holds.
    pub(super) fn pilot_gone(&mut self, pilot: PilotId, conn: u64) {
        let Some(p) = self.pilots.get_mut(&pilot) else {
            return;
        };
        if p.conn != conn || p.tx.is_none() {
            return;
        }
        tracing::info!(
            "pilot {pilot} disconnected; waiting {:?} for it to come back",
            self.cfg.pilot_timeout
        );
        p.tx = None;
        p.disconnected_at = Some(Instant::now());
        self.batch.ops.push(Op::PilotState {
            id: pilot,
            state: PilotState::Disconnected,
            reason: None,
            at: now_us(),
        });
    }

    fn pilot_msg(&mut self, pilot: PilotId, m: FromPilot) {
        match m {
            FromPilot::Started { attempt, at_us } => {
                let attempt = AttemptId(attempt);
                let Some(a) = self.attempts.get_mut(&attempt) else {
                    return;
                };
                if a.pilot != Some(pilot) {
                    return;
                }
                a.state = AttemptState::Running;
                let run = a.run;
                self.batch.ops.push(Op::Started {
                    id: attempt,
                    at: at_us,
                });
                self.mark_running(run);
            }
            FromPilot::Finished(r) => self.finished(pilot, r),
            FromPilot::Returned { attempts } => {
                for a in attempts.into_iter().map(AttemptId) {
                    if self.attempts.get(&a).and_then(|x| x.pilot) == Some(pilot) {
                        self.requeue(a, AttemptState::Returned, "returned by a draining pilot");
                    }
                }
            }
            FromPilot::Draining { reason } => {
                let Some(p) = self.pilots.get_mut(&pilot) else {
                    return;
                };
                p.draining = true;
                self.batch.ops.push(Op::PilotState {
                    id: pilot,
                    state: PilotState::Draining,
                    reason: Some(reason),
                    at: now_us(),
                });
            }
            FromPilot::Heartbeat => {}
            FromPilot::Bye { reason } => {
                tracing::info!("pilot {pilot} left: {reason}");
                self.lose_pilot(pilot, PilotState::Left, &reason);
            }
            FromPilot::Hello { .. } => {}
        }
    }

    /// The pilot is gone for good (`Left` or `Lost`): everything it held
    /// goes back to the queue, without using a try.
    pub(super) fn lose_pilot(&mut self, pilot: PilotId, state: PilotState, why: &str) {
        let Some(p) = self.pilots.remove(&pilot) else {
            return;
        };
        self.alloc.pilot_gone(pilot.0, why, now_us());
        self.batch.ops.push(Op::PilotState {
            id: pilot,
            state,
            reason: Some(why.to_string()),
            at: now_us(),
        });
        let lost = state == PilotState::Lost;
        let kind = if lost { "pilot_lost" } else { "pilot_left" };
        self.event(None, None, Some(pilot), kind, Some(why.to_string()));
        let mut held = p.held();
        held.sort_unstable();
        // A preemptable queue's pilot goes when the scheduler wants its
        // nodes: whatever it ran did nothing wrong.
        let preempted = p.info.preemptable;
        let reason = format!(
            "pilot {pilot} at {} {}: {why}",
            p.site,
            match (preempted, lost) {
                (true, _) => "preempted (a preemptable queue)",
                (false, true) => "lost",
                (false, false) => "left",
            }
        );
        for a in held {
            let Some(att) = self.attempts.remove(&a) else {
                continue;
            };
            // Running, or started on the pilot before word of it arrived:
            // a step that kills its pilot at once never says it started.
            let was_running = att.state == AttemptState::Running || p.in_capacity.contains_key(&a);
            self.requests.remove(&a);
            if self.runs.contains_key(&att.run) && preempted {
                self.attempt_preempted(att, a, &p.site, &reason);
            } else if self.runs.contains_key(&att.run) {
                self.attempt_lost(att, a, was_running, &reason);
            } else {
                self.batch.ops.push(Op::AttemptState {
                    id: a,
                    state: AttemptState::Cancelled,
                    error: Some(reason.clone()),
                    at: now_us(),
                });
            }
        }
    }

    /// Declares lost the pilots that stayed away or silent for the pilot timeout.
    pub(super) fn tick(&mut self) {
        self.tick_at(Instant::now());
    }

    pub(super) fn tick_at(&mut self, now: Instant) {
        let timeout = self.cfg.pilot_timeout;
        let mut lost = Vec::new();
        for (id, p) in &self.pilots {
            match p.disconnected_at {
                Some(t) if now.duration_since(t) >= timeout => {
                    lost.push((*id, "did not reconnect"))
                }
                None if now.duration_since(p.last_seen) >= timeout => {
                    lost.push((*id, "heartbeat timed out"))
                }
                _ => {}
            }
        }
        for (id, why) in lost {
            tracing::warn!("pilot {id} lost: {why} within {timeout:?}");
            if let Some(tx) = self.pilots.get(&id).and_then(|p| p.tx.clone()) {
                let msg = ToPilot::Refused {
                    reason: format!("declared lost: {why}"),
                };
                // After the requeue is committed, like every other message.
                self.batch.effects.push(Box::new(move || {
                    let _ = tx.send(vec![msg]);
                }));
            }
            self.lose_pilot(id, PilotState::Lost, why);
        }
    }
}
