//! Placement: which ready attempt goes to which pilot, and — the same
//! rules, said in words — why a ready attempt waits (`beamflow runs
//! explain`).
//!
//! Ready attempts are taken best-ranked first (see [`super::ready`]): first
//! to a pilot where resources are free, then ahead of time to pilots with
//! room in their prefetch queue. Pilots in a reservation are kept for
//! `realtime` steps, which go there first; other steps use them only when
//! they are idle. Among the pilots that may take an attempt, the least
//! loaded wins. A `gpu` step with a variant that needs no GPU runs that
//! variant on a `cpu` pilot while no connected pilot serves `gpu` at all
//! (a laptop, a CPU-only site) instead of waiting for ever.

use super::pilots::Pilot;
use super::{Core, Shape};
use crate::api::{AttemptId, AttemptState, PilotId, PilotVerdict, RunId, StepExplain};
use crate::resources::capacity::Charge;
use crate::resources::ResourceRequest;
use crate::store::Op;
use crate::util::{fmt_secs, now_us};

/// How well a pilot suits an attempt, compared lexicographically (lower is
/// better): at the site where the step's last pilot was preempted, on the
/// wrong side of a reservation, nothing free now, load.
type Preference = (u8, u8, u8, usize);

/// What a pilot says to an attempt of one shape now.
enum Verdict {
    /// It takes it, in the variant that fits now (`None`: prefetched, to
    /// start when resources free up).
    Takes(Option<Charge>, Preference),
    /// It does not, and why.
    No(String),
}

/// The attempt's target, and whether a `gpu` step may run its CPU variant
/// on `cpu` pilots because no connected pilot serves `gpu`.
struct Want<'a> {
    target: &'a str,
    req: &'a ResourceRequest,
    timeout_s: Option<f64>,
    cpu_fallback: bool,
    /// Placed at another site first (its last pilot there was preempted).
    avoid_site: Option<&'a str>,
    /// The remotes its staged inputs come from: only pilots whose site
    /// reaches them can get the data.
    remotes: Vec<&'a str>,
}

impl Core {
    pub(super) fn schedule(&mut self) {
        if self.ready.is_empty() || self.pilots.is_empty() {
            return;
        }
        let now = now_us();
        let multi_site = self.multi_site();
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
                let want = self.want(&shape, a);
                let Some((pid, fit)) = self.best_pilot(&want, now) else {
                    break;
                };
                let placed = multi_site.then(|| self.placed(&want, pid, fit.is_some(), now));
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
                if placed.is_some() {
                    self.event(Some(run), Some(aid), Some(pid), "placed", placed);
                }
                self.mark_running(run);
            }
        }
        self.ready.retain(|_, q| !q.is_empty());
    }

    fn want<'a>(&self, (target, req): &'a Shape, a: &'a super::Attempt) -> Want<'a> {
        let cpu_fallback = target == "gpu"
            && req.variants.iter().any(|v| v.gpus == 0)
            && !self.pilots.values().any(|p| p.is_up() && p.serves(target));
        Want {
            target,
            req,
            timeout_s: a.spec.timeout_s,
            cpu_fallback,
            avoid_site: a.avoid_site.as_deref(),
            remotes: a.spec.stage.iter().filter_map(|s| s.remote()).collect(),
        }
    }

    /// Whether pilots of more than one site are in play: only then does
    /// each placement say where and why (an event per dispatch).
    fn multi_site(&self) -> bool {
        !self.sites.is_empty() || {
            let mut sites = self.pilots.values().map(|p| p.site.as_str());
            let first = sites.next();
            sites.any(|s| Some(s) != first)
        }
    }

    /// Where an attempt goes and why, against the other sites' pilots
    /// (`beamflow runs show` prints it).
    fn placed(&self, want: &Want, pid: PilotId, free_now: bool, now: i64) -> String {
        let p = &self.pilots[&pid];
        let how = match (free_now, p.load()) {
            (true, 0) => "a warm idle pilot",
            (true, _) => "free resources now on a busy pilot",
            (false, _) => "its prefetch queue, to start when resources free up",
        };
        let mut out = format!("site {} (pilot {pid} {}): {how}", p.site, p.info.name);
        if let Some(r) = self.alloc.routed(pid.0) {
            out += &format!("; its job was {r}");
        }
        if let Some(s) = want.avoid_site {
            out += &format!("; the step's last pilot, at {s}, was preempted");
        }
        let mut others: std::collections::BTreeMap<&str, String> = Default::default();
        for (oid, o) in &self.pilots {
            if *oid == pid || o.site == p.site {
                continue;
            }
            let why = match verdict(o, want, now) {
                Verdict::Takes(Some(_), _) => "could take it now".to_string(),
                Verdict::Takes(None, _) => "could prefetch it".to_string(),
                Verdict::No(why) => why,
            };
            others.entry(o.site.as_str()).or_insert(why);
        }
        for (site, why) in others {
            out += &format!("; site {site}: {why}");
        }
        out
    }

    /// The pilot an attempt goes to now, with the variant that fits its
    /// free resources (`None`: prefetched, to start later).
    fn best_pilot(&self, want: &Want, now: i64) -> Option<(PilotId, Option<Charge>)> {
        let mut best: Option<(PilotId, Option<Charge>, Preference)> = None;
        for (pid, p) in &self.pilots {
            if let Verdict::Takes(fit, pref) = verdict(p, want, now) {
                if best.as_ref().is_none_or(|b| pref < b.2) {
                    best = Some((*pid, fit, pref));
                }
            }
        }
        best.map(|(p, fit, _)| (p, fit))
    }

    /// What the live attempts of `run` wait for, or where they run.
    pub(super) fn explain(&self, run: RunId) -> Vec<StepExplain> {
        let now = now_us();
        let mut live: Vec<(&AttemptId, &super::Attempt)> =
            self.attempts.iter().filter(|(_, a)| a.run == run).collect();
        live.sort_by_key(|(id, _)| **id);
        live.into_iter()
            .map(|(id, a)| {
                let shape: Shape = (
                    self.runs[&run].flow.steps[a.step].on.clone(),
                    a.spec.resources.clone(),
                );
                let mut pilots = Vec::new();
                let mut waiting = None;
                if a.state == AttemptState::Ready {
                    let want = self.want(&shape, a);
                    let mut ids: Vec<&PilotId> = self.pilots.keys().collect();
                    ids.sort();
                    for pid in ids {
                        let p = &self.pilots[pid];
                        let (takes, why) = match verdict(p, &want, now) {
                            Verdict::Takes(Some(_), _) => (true, "takes it now".to_string()),
                            Verdict::Takes(None, _) => (
                                true,
                                "takes it into its prefetch queue, to start when resources free up"
                                    .to_string(),
                            ),
                            Verdict::No(why) => (false, why),
                        };
                        pilots.push(PilotVerdict {
                            pilot: pid.0,
                            name: p.info.name.clone(),
                            takes,
                            why,
                        });
                    }
                    waiting = Some(self.waiting(&want, &pilots));
                }
                StepExplain {
                    step: a.spec.step.clone(),
                    attempt: id.0,
                    state: a.state,
                    target: shape.0.clone(),
                    resources: shape.1.clone(),
                    timeout_s: a.spec.timeout_s,
                    pilot: a.pilot.map(|p| p.0),
                    waiting,
                    pilots,
                }
            })
            .collect()
    }

    /// One sentence for a ready attempt's wait.
    fn waiting(&self, want: &Want, verdicts: &[PilotVerdict]) -> String {
        let up: Vec<&Pilot> = self.pilots.values().filter(|p| p.is_up()).collect();
        if up.is_empty() {
            return match self.pilots.len() {
                0 => "waiting: no pilot is connected".into(),
                n => format!("waiting: no pilot is connected ({n} disconnected or draining)"),
            };
        }
        if !want.cpu_fallback && !up.iter().any(|p| p.serves(want.target)) {
            let gpu_hint = if want.target == "gpu" {
                " (and the step has no variant without GPUs to run on a cpu pilot)"
            } else {
                ""
            };
            return format!(
                "waiting: no connected pilot serves target {}{gpu_hint}",
                want.target
            );
        }
        if verdicts.iter().any(|v| v.takes) {
            return "waiting for the next placement".into();
        }
        if !up.iter().any(|p| p.could_ever_run(want.req)) {
            return format!(
                "waiting: no connected pilot is large enough for {}",
                describe(want.req)
            );
        }
        "waiting for a pilot with free resources (see each pilot's reason)".into()
    }
}

fn describe(req: &ResourceRequest) -> String {
    req.variants
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Whether pilot `p` takes an attempt of `want` now; every rule of
/// placement is here, for [`Core::schedule`] and [`Core::explain`] alike.
fn verdict(p: &Pilot, want: &Want, now: i64) -> Verdict {
    if p.tx.is_none() {
        return Verdict::No("disconnected".into());
    }
    if p.draining {
        return Verdict::No("draining: takes no new work".into());
    }
    let via_cpu = want.cpu_fallback && !p.serves(want.target) && p.serves("cpu");
    if !p.serves(want.target) && !via_cpu {
        return Verdict::No(format!(
            "serves {}, not {}",
            p.info.targets.join(", "),
            want.target
        ));
    }
    if let Some(end) = p.info.walltime_end_us {
        let need = (want.timeout_s.unwrap_or(0.0) * 1e6) as i64;
        if now + need >= end {
            return Verdict::No(format!(
                "{} of walltime left, the step may take {}",
                fmt_secs((end - now).max(0) as f64 / 1e6),
                fmt_secs(want.timeout_s.unwrap_or(0.0))
            ));
        }
    }
    if let Some(r) = want
        .remotes
        .iter()
        .find(|r| !p.remotes.iter().any(|m| m == *r))
    {
        return Verdict::No(format!(
            "its site {} declares no transfer remote `{r}`, which the step stages from",
            p.site
        ));
    }
    if !p.could_ever_run(want.req) {
        return Verdict::No(format!(
            "offers {}, the step asks for {}",
            p.info.resources,
            describe(want.req)
        ));
    }
    // The pilot starts tasks in order: behind a prefetched task, nothing
    // starts in today's free resources.
    let fit = if p.prefetched.is_empty() {
        p.fitting_variant(want.req)
    } else {
        None
    };
    let realtime = want.target == "realtime";
    let reserved = p.info.reservation.is_some();
    if reserved && !realtime && (p.load() > 0 || fit.is_none()) {
        return Verdict::No(
            "in a reservation: kept for realtime steps, other work only while idle".into(),
        );
    }
    if fit.is_none() && p.prefetched.len() >= p.info.prefetch as usize {
        return Verdict::No(format!(
            "busy: {} free, its prefetch queue full ({} waiting)",
            p.cap.free(),
            p.prefetched.len()
        ));
    }
    // Realtime prefers reservation pilots, other work the rest; then a
    // pilot with free resources, then the least loaded.
    let pref = (
        u8::from(want.avoid_site == Some(p.site.as_str())),
        u8::from(reserved != realtime),
        u8::from(fit.is_none()),
        p.load(),
    );
    Verdict::Takes(fit, pref)
}
