//! Routing work between queues that serve the same targets, at one site or
//! several: each queue's expected start for a new pilot job, from what it
//! measured (how long its recent jobs took from submission to their first
//! pilot) and what it has waiting (a job queued longer than usual is late,
//! and a late job tends to stay late). Work goes to the queue expected to
//! start soonest; a queue whose waiting jobs are later than another queue's
//! expected start by more than the *patience* no longer holds the work
//! back, so the other queue submits too — the job that starts first gets
//! the work, the other's pilots leave idle.

use std::collections::BTreeMap;

use super::queue::{Phase, Queue};
use crate::util::fmt_secs;

/// How many recent starts make a queue's typical start delay.
const RECENT_STARTS: usize = 5;

/// When a queue's next pilot is expected to start, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    /// From now, µs.
    pub us: i64,
    pub why: String,
}

fn secs(us: i64) -> String {
    if us <= 0 {
        "now".into()
    } else {
        fmt_secs(us as f64 / 1e6)
    }
}

impl Queue {
    /// The median of the recent jobs' delays from submission to their first
    /// pilot; `None` before any job of this queue started.
    pub(super) fn typical_start_us(&self) -> Option<i64> {
        let mut starts: Vec<(u32, i64)> = self
            .jobs
            .values()
            .filter(|j| j.ever_connected)
            .filter_map(|j| {
                j.started_us
                    .map(|s| (j.number, (s - j.submitted_us).max(0)))
            })
            .collect();
        starts.sort_unstable();
        let mut recent: Vec<i64> = starts
            .iter()
            .rev()
            .take(RECENT_STARTS)
            .map(|s| s.1)
            .collect();
        recent.sort_unstable();
        recent.get(recent.len() / 2).copied()
    }

    /// When a pilot of this queue is expected to start, from `now`.
    pub(super) fn expected_start(&self, now: i64) -> Expected {
        let typical = self.typical_start_us();
        let oldest = self
            .jobs
            .values()
            .filter(|j| j.phase == Phase::Queued)
            .min_by_key(|j| j.submitted_us);
        match (oldest, typical) {
            (Some(j), Some(t)) => {
                let age = (now - j.submitted_us).max(0);
                if age < t {
                    Expected {
                        us: t - age,
                        why: format!(
                            "job {} queued {}, its jobs typically start in {}",
                            j.job_id,
                            secs(age),
                            secs(t)
                        ),
                    }
                } else {
                    Expected {
                        us: age,
                        why: format!(
                            "job {} queued {}, late (its jobs typically start in {})",
                            j.job_id,
                            secs(age),
                            secs(t)
                        ),
                    }
                }
            }
            (Some(j), None) => {
                let age = (now - j.submitted_us).max(0);
                Expected {
                    us: age,
                    why: format!("job {} queued {}, none started yet", j.job_id, secs(age)),
                }
            }
            (None, Some(t)) => Expected {
                us: t,
                why: format!("its jobs typically start in {}", secs(t)),
            },
            (None, None) => Expected {
                us: 0,
                why: "no job queued, no start measured yet".into(),
            },
        }
    }
}

/// The queues of one plan in the order they are offered work, with their
/// expected starts.
pub(super) struct Routes {
    pub order: Vec<u64>,
    pub expected: BTreeMap<u64, Expected>,
    /// Queues that may submit now, per set of demand targets.
    open: BTreeMap<Vec<String>, Vec<u64>>,
    patience_us: i64,
}

impl Routes {
    /// `ids`: the queues that can be asked now; `open(q)`: whether `q` may
    /// submit now (not paused, in its window, below its job limit).
    pub(super) fn new(
        queues: &BTreeMap<u64, Queue>,
        ids: &[u64],
        now: i64,
        patience_us: i64,
        open: impl Fn(&Queue) -> bool,
    ) -> Routes {
        let expected: BTreeMap<u64, Expected> = ids
            .iter()
            .map(|id| (*id, queues[id].expected_start(now)))
            .collect();
        let mut order = ids.to_vec();
        order.sort_by_key(|id| (expected[id].us, *id));
        let mut by_key: BTreeMap<Vec<String>, Vec<u64>> = BTreeMap::new();
        for id in &order {
            if open(&queues[id]) {
                by_key
                    .entry(queues[id].spec.demand_targets())
                    .or_default()
                    .push(*id);
            }
        }
        Routes {
            order,
            expected,
            open: by_key,
            patience_us,
        }
    }

    /// The soonest expected start among the other open queues for `key`.
    fn best_other(&self, key: &[String], id: u64) -> Option<(u64, &Expected)> {
        self.open
            .get(key)?
            .iter()
            .filter(|o| **o != id)
            .map(|o| (*o, &self.expected[o]))
            .min_by_key(|(o, e)| (e.us, *o))
    }

    /// Whether queue `id`'s waiting jobs are so late, against another
    /// queue's expected start, that they no longer hold the work back.
    pub(super) fn stalled(&self, q: &Queue) -> bool {
        q.waiting_nodes() > 0
            && self
                .best_other(&q.spec.demand_targets(), q.id)
                .is_some_and(|(_, o)| self.expected[&q.id].us > o.us + self.patience_us)
    }

    /// Why queue `q` gets work now, against the others that could take it;
    /// `None` when no other queue could.
    pub(super) fn reason(&self, queues: &BTreeMap<u64, Queue>, q: &Queue) -> Option<String> {
        let key = q.spec.demand_targets();
        let others: Vec<String> = self
            .order
            .iter()
            .filter(|o| **o != q.id && queues[o].spec.demand_targets() == key)
            .map(|o| {
                let e = &self.expected[o];
                let s = &queues[o].spec.target;
                let closed = if self.open.get(&key).is_some_and(|v| v.contains(o)) {
                    ""
                } else {
                    ", not submitting now"
                };
                format!(
                    "queue {o} at {}: {} ({}{closed})",
                    s.site,
                    secs(e.us),
                    e.why
                )
            })
            .collect();
        if others.is_empty() {
            return None;
        }
        let e = &self.expected[&q.id];
        Some(format!(
            "routed to queue {} at {}: expected start {} ({}); {}",
            q.id,
            q.spec.target.site,
            secs(e.us),
            e.why,
            others.join("; ")
        ))
    }
}
