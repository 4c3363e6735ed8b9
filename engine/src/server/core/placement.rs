//! Placement: which ready attempt goes to which pilot.
//!
//! Ready attempts are taken best-ranked first (see [`super::ready`]): first
//! to a pilot where resources are free, then ahead of time to pilots with
//! room in their prefetch queue. Pilots in a reservation are kept for
//! `realtime` steps, which go there first; other steps use them only when
//! they are idle. Among the pilots that may take an attempt, the least
//! loaded wins.

use super::{Core, Shape};
use crate::api::{AttemptState, PilotId};
use crate::resources::capacity::Charge;
use crate::store::Op;
use crate::util::now_us;

/// How well a pilot suits an attempt, compared lexicographically (lower is
/// better): on the wrong side of a reservation, nothing free now, load.
type Preference = (u8, u8, usize);

impl Core {
    pub(super) fn schedule(&mut self) {
        if self.ready.is_empty() || self.pilots.is_empty() {
            return;
        }
        let now = now_us();
        let mut shapes: Vec<Shape> = self.ready.keys().cloned().collect();
        shapes.sort_by_key(|s| self.ready[s].front());
        for shape in shapes {
            while let Some(rank) = self.ready.get(&shape).and_then(|q| q.front()) {
                let aid = rank.attempt;
                let Some(a) = self.attempts.get(&aid) else {
                    self.ready.get_mut(&shape).map(|q| q.pop_front());
                    continue;
                };
                if a.state != AttemptState::Ready {
                    self.ready.get_mut(&shape).map(|q| q.pop_front());
                    continue;
                }
                let Some((pid, fit)) = self.best_pilot(&shape, a.spec.timeout_s, now) else {
                    break;
                };
                self.ready.get_mut(&shape).map(|q| q.pop_front());
                let p = self.pilots.get_mut(&pid).expect("chosen pilot");
                match fit {
                    Some(v) => p.charge(aid, v),
                    None => p.prefetched.push_back(aid),
                }
                let a = self.attempts.get_mut(&aid).expect("ready attempt");
                a.state = AttemptState::Dispatched;
                a.pilot = Some(pid);
                let run = a.run;
                self.batch.ops.push(Op::Dispatched {
                    id: aid,
                    pilot: pid,
                    at: now,
                });
                self.outbox
                    .entry(pid)
                    .or_default()
                    .tasks
                    .push(a.spec.clone());
                self.mark_running(run);
            }
        }
        self.ready.retain(|_, q| !q.is_empty());
    }

    /// The pilot an attempt of `shape` goes to now, with the variant that
    /// fits its free resources (`None`: prefetched, to start later).
    fn best_pilot(
        &self,
        (target, req): &Shape,
        timeout_s: Option<f64>,
        now: i64,
    ) -> Option<(PilotId, Option<Charge>)> {
        let realtime = target == "realtime";
        let mut best: Option<(PilotId, Option<Charge>, Preference)> = None;
        for (pid, p) in &self.pilots {
            if !p.accepts(target, timeout_s, now) || !p.could_ever_run(req) {
                continue;
            }
            // The pilot starts tasks in order: behind a prefetched task,
            // nothing starts in today's free resources.
            let fit = if p.prefetched.is_empty() {
                p.fitting_variant(req)
            } else {
                None
            };
            let reserved = p.info.reservation.is_some();
            if reserved && !realtime && (p.load() > 0 || fit.is_none()) {
                continue;
            }
            if fit.is_none() && p.prefetched.len() >= p.info.prefetch as usize {
                continue;
            }
            // Realtime prefers reservation pilots, other work the rest;
            // then a pilot with free resources, then the least loaded.
            let pref = (
                u8::from(reserved != realtime),
                u8::from(fit.is_none()),
                p.load(),
            );
            if best.as_ref().is_none_or(|b| pref < b.2) {
                best = Some((*pid, fit, pref));
            }
        }
        best.map(|(p, fit, _)| (p, fit))
    }
}
