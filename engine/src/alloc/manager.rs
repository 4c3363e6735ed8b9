//! The allocation manager's decisions, without I/O: given the clock, demand
//! and what pilots and the scheduler reported, which jobs to submit, poll and
//! cancel. The server runs the commands and feeds the answers back, so every
//! rule here is tested with a fake clock.

use std::collections::{BTreeMap, BTreeSet};

use super::queue::{describe, job_info, no_queue, plural, Command, Demand, Job, Phase, Queue};
use super::route::Routes;
use super::{JobInfo, LogEntry, QueueInfo, QueueSpec};
use crate::batch::JobState;

const S: i64 = 1_000_000;
/// Delay before the next submission after 0, 1, 2, 3, 4+ failures in a row.
pub const BACKOFF_US: [i64; 5] = [0, 60 * S, 15 * 60 * S, 30 * 60 * S, 60 * 60 * S];
/// Submissions failing in a row before the queue pauses.
pub const MAX_SUBMIT_FAILURES: u32 = 10;
/// Jobs in a row that end before any pilot of theirs connected.
pub const MAX_START_FAILURES: u32 = 3;
/// Polls in a row that do not find a job before it is taken as gone: the
/// scheduler may briefly forget a job it accepted (PBS routing queues, Slurm
/// "Invalid job id" after a controller restart).
pub const QUEUED_STATUS_ERRORS: u32 = 10;
pub const RUNNING_STATUS_ERRORS: u32 = 20;
/// Running jobs with a connected pilot are polled this rarely: the pilots
/// already say when they start and leave.
pub const RUNNING_POLL_US: i64 = 30 * 60 * S;
/// A reservation job shorter than this is not worth submitting.
pub const MIN_WALLTIME_S: u64 = 120;

/// Persisted changes the server must write after a call.
#[derive(Default, Debug)]
pub struct Changes {
    pub queues: BTreeSet<u64>,
    pub removed: BTreeSet<u64>,
    pub jobs: BTreeSet<(u64, String)>,
    pub log: Vec<LogEntry>,
}

pub struct Manager {
    queues: BTreeMap<u64, Queue>,
    next_id: u64,
    /// Queued jobs (and running ones whose pilots are gone) are polled this often.
    poll_us: i64,
    /// Batch job id → queue.
    by_job: BTreeMap<String, u64>,
    /// Pilot → (queue, job id).
    by_pilot: BTreeMap<u64, (u64, String)>,
    /// Sites that cannot be asked now (their agent is gone), with why:
    /// their queues submit and poll nothing, and their share of the
    /// demand goes to other sites' queues.
    offline: BTreeMap<String, String>,
    /// How much later than another queue's expected start a queue's waiting
    /// jobs may be before that queue submits for the same work (see
    /// [`super::route`]).
    patience_us: i64,
    changes: Changes,
}

/// The default patience: a pilot job queued two minutes longer than
/// another queue's next would take.
pub const DEFAULT_PATIENCE_S: f64 = 120.0;

impl Manager {
    pub fn new(poll_interval_s: f64) -> Self {
        Manager {
            queues: BTreeMap::new(),
            next_id: 1,
            poll_us: (poll_interval_s * 1e6) as i64,
            by_job: BTreeMap::new(),
            by_pilot: BTreeMap::new(),
            offline: BTreeMap::new(),
            patience_us: (DEFAULT_PATIENCE_S * 1e6) as i64,
            changes: Changes::default(),
        }
    }

    /// Sets the patience (see [`super::route`]).
    pub fn with_patience(mut self, patience_s: f64) -> Self {
        self.patience_us = (patience_s * 1e6) as i64;
        self
    }

    /// Rebuilds from the store; jobs not ended wait for their pilots to
    /// reconnect or for the next poll.
    pub fn restore(&mut self, queues: Vec<Queue>, jobs: Vec<(u64, Job)>) {
        for q in queues {
            self.next_id = self.next_id.max(q.id + 1);
            self.queues.insert(q.id, q);
        }
        for (qid, j) in jobs {
            if let Some(q) = self.queues.get_mut(&qid) {
                if j.phase != Phase::Ended {
                    self.by_job.insert(j.job_id.clone(), qid);
                }
                q.jobs.insert(j.job_id.clone(), j);
            }
        }
    }

    /// Marks `site` as not reachable (with the reason) or reachable again.
    pub fn set_offline(&mut self, site: &str, reason: Option<String>) {
        match reason {
            Some(r) => {
                self.offline.insert(site.to_string(), r);
            }
            None => {
                self.offline.remove(site);
            }
        }
    }

    /// A status request that will not be answered (its agent went): the
    /// queue is polled again at the next interval.
    pub fn poll_abandoned(&mut self, queue: u64) {
        if let Some(q) = self.queues.get_mut(&queue) {
            q.polling = false;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    pub fn queue(&self, id: u64) -> Option<&Queue> {
        self.queues.get(&id)
    }

    pub fn job(&self, queue: u64, job: &str) -> Option<&Job> {
        self.queues.get(&queue).and_then(|q| q.jobs.get(job))
    }

    fn log(&mut self, queue: u64, now: i64, level: &str, message: String) {
        match level {
            "error" | "warn" => tracing::warn!("allocation queue {queue}: {message}"),
            _ => tracing::info!("allocation queue {queue}: {message}"),
        }
        self.changes.log.push(LogEntry {
            queue,
            at_us: now,
            level: level.to_string(),
            message,
        });
    }

    pub fn add(&mut self, spec: QueueSpec, now: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let what = describe(&spec);
        self.queues.insert(
            id,
            Queue {
                id,
                spec,
                created_us: now,
                paused: None,
                submit_failures: 0,
                start_failures: 0,
                next_submit_us: 0,
                next_number: 1,
                jobs: BTreeMap::new(),
                submitting: Vec::new(),
                routed: BTreeMap::new(),
                polling: false,
            },
        );
        self.changes.queues.insert(id);
        self.log(id, now, "info", format!("created: {what}"));
        id
    }

    pub fn pause(&mut self, id: u64, reason: &str, now: i64) -> Result<(), String> {
        let q = self.queues.get_mut(&id).ok_or_else(|| no_queue(id))?;
        q.paused = Some(reason.to_string());
        self.changes.queues.insert(id);
        self.log(id, now, "info", format!("paused: {reason}"));
        Ok(())
    }

    pub fn resume(&mut self, id: u64, now: i64) -> Result<(), String> {
        let q = self.queues.get_mut(&id).ok_or_else(|| no_queue(id))?;
        q.paused = None;
        q.submit_failures = 0;
        q.start_failures = 0;
        q.next_submit_us = 0;
        self.changes.queues.insert(id);
        self.log(id, now, "info", "resumed".into());
        Ok(())
    }

    /// Removes a queue. With jobs still queued or running it refuses unless
    /// `cancel` is set, in which case the jobs are cancelled.
    pub fn remove(&mut self, id: u64, cancel: bool, now: i64) -> Result<Vec<Command>, String> {
        let q = self.queues.get(&id).ok_or_else(|| no_queue(id))?;
        let live: Vec<String> = q
            .jobs
            .values()
            .filter(|j| j.phase != Phase::Ended)
            .map(|j| j.job_id.clone())
            .collect();
        if !live.is_empty() && !cancel {
            return Err(format!(
                "allocation queue {id} still has {} job{} queued or running ({}); pass --cancel to cancel them, or pause the queue and let them finish",
                live.len(),
                if live.len() == 1 { "" } else { "s" },
                live.join(", ")
            ));
        }
        self.queues.remove(&id);
        self.by_job.retain(|_, q| *q != id);
        self.by_pilot.retain(|_, (q, _)| *q != id);
        self.changes.removed.insert(id);
        self.log(
            id,
            now,
            "info",
            if live.is_empty() {
                "removed".into()
            } else {
                format!("removed; cancelling {}", live.join(", "))
            },
        );
        Ok(if live.is_empty() {
            vec![]
        } else {
            vec![Command::Cancel {
                queue: id,
                jobs: live,
            }]
        })
    }

    /// What to submit and poll now, given the work nothing could take.
    /// Queues serving the same targets share the work, offered first to
    /// the one expected to start soonest ([`super::route`]).
    pub fn plan(&mut self, now: i64, demand: &BTreeMap<String, Demand>) -> Vec<Command> {
        let mut cmds = Vec::new();
        let ids: Vec<u64> = self
            .queues
            .values()
            .filter(|q| !self.offline.contains_key(&q.spec.target.site))
            .map(|q| q.id)
            .collect();
        let routes = Routes::new(&self.queues, &ids, now, self.patience_us, |q| {
            q.paused.is_none()
                && now >= q.next_submit_us
                && q.in_window(now)
                && q.active_jobs() < q.spec.max_jobs
        });
        // Nodes wanted per set of demand targets (in the first queue's
        // nodes), less what queues on time already wait for.
        let mut remaining: BTreeMap<Vec<String>, i64> = BTreeMap::new();
        for id in &routes.order {
            let q = &self.queues[id];
            let left = remaining
                .entry(q.spec.demand_targets())
                .or_insert(q.wanted_nodes(demand) as i64);
            if !routes.stalled(q) {
                *left -= q.waiting_nodes() as i64;
            }
        }
        for &id in &routes.order {
            let q = self.queues.get_mut(&id).expect("queue id from keys");
            let left = remaining
                .get_mut(&q.spec.demand_targets())
                .expect("every queue's key");
            let warm_deficit = match &q.spec.reservation {
                Some(r) if q.in_window(now) => r.warm as i64 - q.active_nodes() as i64,
                _ => 0,
            };
            let can_submit = q.paused.is_none() && now >= q.next_submit_us && q.in_window(now);
            // Submit jobs while work or the warm pool wants nodes and limits allow.
            if can_submit {
                let mut warm_left = warm_deficit;
                loop {
                    let want = (*left).max(warm_left);
                    if want <= 0 {
                        break;
                    }
                    let s = &q.spec;
                    // A pilot holding its whole job needs every node of
                    // it: steps may ask for up to that many.
                    let nodes = if s.target.pilot_per == crate::site::PilotPer::Job {
                        s.nodes_per_job
                    } else {
                        (want as u32).min(s.nodes_per_job).max(1)
                    };
                    if q.active_jobs() >= s.max_jobs {
                        break;
                    }
                    if q.count(Phase::Queued) + q.submitting.len() as u32 >= s.backlog {
                        break;
                    }
                    if s.max_nodes.is_some_and(|m| q.active_nodes() + nodes > m) {
                        break;
                    }
                    let mut walltime_s = s.walltime_s;
                    let mut idle_timeout_s = s.idle_timeout_s;
                    if let Some(r) = &s.reservation {
                        if let Some(end) = r.end_us {
                            walltime_s = walltime_s.min(((end - now) / S).max(0) as u64);
                        }
                        // Warm pilots stay for the window; the walltime ends them.
                        idle_timeout_s = 0;
                    }
                    if walltime_s < MIN_WALLTIME_S {
                        break;
                    }
                    let number = q.next_number;
                    q.next_number += 1;
                    q.submitting.push((number, nodes));
                    self.changes.queues.insert(id);
                    *left -= nodes as i64;
                    warm_left -= nodes as i64;
                    cmds.push(Command::Submit {
                        queue: id,
                        number,
                        nodes,
                        walltime_s,
                        idle_timeout_s,
                    });
                }
            }
            // Poll jobs whose state nobody reports.
            if !q.polling && self.poll_us > 0 {
                let due: Vec<String> = q
                    .jobs
                    .values()
                    .filter(|j| j.phase != Phase::Ended)
                    .filter(|j| {
                        let every = if j.phase == Phase::Running && !j.pilots.is_empty() {
                            RUNNING_POLL_US
                        } else {
                            self.poll_us
                        };
                        now - j.last_poll_us.max(j.submitted_us) >= every
                    })
                    .map(|j| j.job_id.clone())
                    .collect();
                if !due.is_empty() {
                    q.polling = true;
                    for j in &due {
                        if let Some(job) = q.jobs.get_mut(j) {
                            job.last_poll_us = now;
                        }
                    }
                    cmds.push(Command::Status {
                        queue: id,
                        jobs: due,
                    });
                }
            }
        }
        // Why each submitting queue got the work, said once per queue.
        let mut reasons: BTreeMap<u64, Option<String>> = BTreeMap::new();
        for c in &cmds {
            if let Command::Submit { queue, number, .. } = c {
                let r = reasons
                    .entry(*queue)
                    .or_insert_with(|| routes.reason(&self.queues, &self.queues[queue]))
                    .clone();
                if let (Some(r), Some(q)) = (r, self.queues.get_mut(queue)) {
                    q.routed.insert(*number, r);
                }
            }
        }
        cmds
    }

    /// A submission came back: the job id, or the scheduler's complaint.
    pub fn submitted(
        &mut self,
        queue: u64,
        number: u32,
        dir: &str,
        result: Result<String, String>,
        now: i64,
    ) {
        let Some(q) = self.queues.get_mut(&queue) else {
            // Removed meanwhile: nothing to track; a job that did start has
            // pilots that serve the targets anyway and leave when idle.
            return;
        };
        let Some(pos) = q.submitting.iter().position(|s| s.0 == number) else {
            return;
        };
        let (_, nodes) = q.submitting.remove(pos);
        let routed = q.routed.remove(&number);
        self.changes.queues.insert(queue);
        match result {
            Ok(job_id) => {
                q.submit_failures = 0;
                q.next_submit_us = 0;
                q.jobs.insert(
                    job_id.clone(),
                    Job {
                        job_id: job_id.clone(),
                        number,
                        nodes,
                        phase: Phase::Queued,
                        dir: dir.to_string(),
                        submitted_us: now,
                        started_us: None,
                        ended_us: None,
                        reason: None,
                        routed: routed.clone(),
                        ever_connected: false,
                        pilots: BTreeSet::new(),
                        status_errors: 0,
                        last_poll_us: now,
                    },
                );
                self.by_job.insert(job_id.clone(), queue);
                self.changes.jobs.insert((queue, job_id.clone()));
                self.log(
                    queue,
                    now,
                    "info",
                    format!(
                        "submitted job {job_id} (#{number}, {nodes} node{}){}",
                        plural(nodes),
                        routed.map(|r| format!("; {r}")).unwrap_or_default()
                    ),
                );
            }
            Err(e) => {
                q.submit_failures += 1;
                let n = q.submit_failures;
                let delay = BACKOFF_US[(n as usize).min(BACKOFF_US.len() - 1)];
                q.next_submit_us = now + delay;
                let pause = n >= MAX_SUBMIT_FAILURES;
                if pause {
                    q.paused = Some(format!("{n} submissions in a row failed; last: {e}"));
                }
                self.log(
                    queue,
                    now,
                    "error",
                    format!(
                        "submission #{number} failed ({n} in a row): {e}{}",
                        if pause {
                            " — queue paused; fix the cause, then `beamflow alloc resume`"
                                .to_string()
                        } else {
                            format!("; next try in {}s", delay / S)
                        }
                    ),
                );
            }
        }
    }

    /// A pilot connected; if it runs in one of our jobs, that job has started.
    /// Returns the queue it belongs to. `site`, when the pilot says it,
    /// keeps equal job ids of two sites' schedulers apart.
    pub fn pilot_connected(
        &mut self,
        pilot: u64,
        site: Option<&str>,
        batch_job: &str,
        now: i64,
    ) -> Option<u64> {
        let (qid, job_id) = self.find_job(site, batch_job)?;
        let q = self.queues.get_mut(&qid)?;
        let j = q.jobs.get_mut(&job_id)?;
        j.pilots.insert(pilot);
        j.status_errors = 0;
        let first = !j.ever_connected;
        j.ever_connected = true;
        let was = j.phase;
        if j.phase != Phase::Running {
            j.phase = Phase::Running;
            j.started_us.get_or_insert(now);
            j.ended_us = None;
            j.reason = None;
        }
        let waited = now - j.submitted_us;
        q.start_failures = 0;
        self.by_job.insert(job_id.clone(), qid);
        self.by_pilot.insert(pilot, (qid, job_id.clone()));
        self.changes.queues.insert(qid);
        self.changes.jobs.insert((qid, job_id.clone()));
        if first || was != Phase::Running {
            self.log(
                qid,
                now,
                "info",
                format!(
                    "job {job_id} started: pilot {pilot} connected {:.1}s after submission",
                    waited as f64 / 1e6
                ),
            );
        }
        Some(qid)
    }

    /// Why pilot `pilot`'s job was submitted where it was, when another
    /// queue could have taken the work.
    pub fn routed(&self, pilot: u64) -> Option<&str> {
        let (q, j) = self.by_pilot.get(&pilot)?;
        self.queues.get(q)?.jobs.get(j)?.routed.as_deref()
    }

    /// A pilot left or was lost; when a job has no pilot left, it has ended.
    pub fn pilot_gone(&mut self, pilot: u64, why: &str, now: i64) {
        let Some((qid, job_id)) = self.by_pilot.remove(&pilot) else {
            return;
        };
        let Some(j) = self
            .queues
            .get_mut(&qid)
            .and_then(|q| q.jobs.get_mut(&job_id))
        else {
            return;
        };
        j.pilots.remove(&pilot);
        if j.pilots.is_empty() && j.phase == Phase::Running {
            self.end_job(qid, &job_id, format!("its pilots left ({why})"), now);
        }
    }

    /// The scheduler's answer to a `Status` command.
    pub fn statuses(
        &mut self,
        queue: u64,
        asked: &[String],
        result: Result<BTreeMap<String, JobState>, String>,
        now: i64,
    ) {
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        q.polling = false;
        let states = match result {
            Ok(s) => s,
            Err(e) => {
                self.log(queue, now, "warn", format!("cannot read job states: {e}"));
                for id in asked {
                    self.status_error(queue, id, "the scheduler could not be asked", now);
                }
                return;
            }
        };
        for id in asked {
            match states.get(id) {
                None => self.status_error(queue, id, "the scheduler no longer knows it", now),
                Some(st) => {
                    let Some(j) = self.queues.get_mut(&queue).and_then(|q| q.jobs.get_mut(id))
                    else {
                        continue;
                    };
                    j.status_errors = 0;
                    match st {
                        JobState::Queued { .. } | JobState::Running => {}
                        JobState::Finished { end, exit } => {
                            let why = format!(
                                "the scheduler reports {end:?}{}",
                                exit.map(|c| format!(" (exit {c})")).unwrap_or_default()
                            );
                            self.end_job(queue, id, why, now);
                        }
                    }
                }
            }
        }
    }

    fn status_error(&mut self, queue: u64, id: &str, why: &str, now: i64) {
        let Some(j) = self.queues.get_mut(&queue).and_then(|q| q.jobs.get_mut(id)) else {
            return;
        };
        if j.phase == Phase::Ended {
            return;
        }
        j.status_errors += 1;
        let limit = if j.phase == Phase::Queued {
            QUEUED_STATUS_ERRORS
        } else {
            RUNNING_STATUS_ERRORS
        };
        if j.status_errors >= limit {
            let n = j.status_errors;
            self.end_job(queue, id, format!("{why} ({n} polls in a row)"), now);
        }
    }

    fn end_job(&mut self, queue: u64, id: &str, why: String, now: i64) {
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        let Some(j) = q.jobs.get_mut(id) else {
            return;
        };
        if j.phase == Phase::Ended {
            return;
        }
        j.phase = Phase::Ended;
        j.ended_us = Some(now);
        let started = j.ever_connected;
        let dir = j.dir.clone();
        j.reason = Some(why.clone());
        let pilots: Vec<u64> = std::mem::take(&mut j.pilots).into_iter().collect();
        for p in pilots {
            self.by_pilot.remove(&p);
        }
        self.by_job.remove(id);
        self.changes.jobs.insert((queue, id.to_string()));
        self.changes.queues.insert(queue);
        if started {
            self.log(queue, now, "info", format!("job {id} ended: {why}"));
            return;
        }
        q.start_failures += 1;
        let n = q.start_failures;
        let pause = n >= MAX_START_FAILURES && q.paused.is_none();
        if pause {
            q.paused = Some(format!(
                "{n} jobs in a row ended before a pilot connected; last: job {id}, {why}"
            ));
        }
        self.log(
            queue,
            now,
            "error",
            format!(
                "job {id} ended before any pilot connected: {why}; its output is in {dir}/stdout{}",
                if pause {
                    " — queue paused; fix the cause, then `beamflow alloc resume`"
                } else {
                    ""
                }
            ),
        );
    }

    /// Matches a pilot's `SLURM_JOB_ID`/`PBS_JOBID` to a job of a queue at
    /// `site` (any site when the pilot does not say): PBS ids may carry a
    /// longer server suffix than `qsub` printed.
    fn find_job(&self, site: Option<&str>, batch_job: &str) -> Option<(u64, String)> {
        let at = |q: &Queue| site.is_none_or(|s| q.spec.target.site == s);
        if let Some(q) = self
            .by_job
            .get(batch_job)
            .filter(|q| self.queues.get(q).is_some_and(at))
        {
            return Some((*q, batch_job.to_string()));
        }
        let head = batch_job.split('.').next().unwrap_or(batch_job);
        for q in self.queues.values().filter(|q| at(q)) {
            for j in q.jobs.values() {
                if j.job_id == batch_job || j.job_id.split('.').next() == Some(head) {
                    return Some((q.id, j.job_id.clone()));
                }
            }
        }
        None
    }

    /// Every queue with its jobs (ended ones: the last `keep_ended`).
    pub fn info(&self, keep_ended: usize) -> Vec<QueueInfo> {
        self.queues
            .values()
            .map(|q| {
                let mut jobs: Vec<JobInfo> = q.jobs.values().map(job_info).collect();
                jobs.sort_by_key(|j| j.number);
                let ended: Vec<usize> = jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.state == "ended")
                    .map(|(i, _)| i)
                    .collect();
                let drop: BTreeSet<usize> = ended
                    .iter()
                    .take(ended.len().saturating_sub(keep_ended))
                    .copied()
                    .collect();
                let jobs = jobs
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| !drop.contains(i))
                    .map(|(_, j)| j)
                    .collect();
                let offline = self.offline.get(&q.spec.target.site);
                QueueInfo {
                    id: q.id,
                    spec: q.spec.clone(),
                    state: if q.paused.is_some() {
                        "paused"
                    } else if offline.is_some() {
                        "offline"
                    } else {
                        "active"
                    }
                    .to_string(),
                    paused_reason: q.paused.clone().or_else(|| offline.cloned()),
                    queued_jobs: q.count(Phase::Queued) + q.submitting.len() as u32,
                    running_jobs: q.count(Phase::Running),
                    ended_jobs: q.count(Phase::Ended),
                    submit_failures: q.submit_failures,
                    start_failures: q.start_failures,
                    next_submit_us: (q.next_submit_us > 0).then_some(q.next_submit_us),
                    jobs,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
