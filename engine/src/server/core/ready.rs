//! Ready attempts in the order they are placed: `realtime` steps first, then
//! the earliest run deadline, the highest priority, the oldest run, and the
//! oldest attempt. A beamline's step never waits behind backfill work that
//! merely arrived earlier.

use std::collections::BTreeSet;

use crate::api::AttemptId;
use crate::flow::FlowSpec;

/// Sort key of one ready attempt; smaller goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// 0 for `realtime` steps, 1 for the rest.
    class: u8,
    /// Absolute deadline (µs), `i64::MAX` without one.
    deadline_us: i64,
    /// Negated priority, so that higher priorities sort first.
    neg_priority: i32,
    submitted_us: i64,
    pub attempt: AttemptId,
}

impl Rank {
    pub fn new(flow: &FlowSpec, step: usize, run_created_us: i64, attempt: AttemptId) -> Self {
        let s = &flow.steps[step];
        Rank {
            class: if s.on == "realtime" { 0 } else { 1 },
            deadline_us: flow
                .deadline_s
                .map(|d| run_created_us.saturating_add((d * 1e6) as i64))
                .unwrap_or(i64::MAX),
            neg_priority: -s.priority.unwrap_or(flow.priority),
            submitted_us: run_created_us,
            attempt,
        }
    }
}

/// Ready attempts of one shape (target, resource request), best first.
/// Entries of attempts withdrawn meanwhile are skipped by the reader.
#[derive(Default, Debug)]
pub struct ReadyQueue(BTreeSet<Rank>);

impl ReadyQueue {
    pub fn push(&mut self, r: Rank) {
        self.0.insert(r);
    }
    pub fn front(&self) -> Option<Rank> {
        self.0.first().copied()
    }
    pub fn pop_front(&mut self) -> Option<Rank> {
        self.0.pop_first()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Rank> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str) -> FlowSpec {
        crate::flow::parse(src, "t.toml", None).unwrap()
    }

    #[test]
    fn realtime_then_deadline_then_priority_then_age() {
        let plain = flow("name = \"p\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\n");
        let urgent = flow("name = \"u\"\nversion = 1\npriority = 5\n[[steps]]\nname = \"a\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\n");
        let due = flow("name = \"d\"\nversion = 1\ndeadline = \"10m\"\n[[steps]]\nname = \"a\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\n");
        let rt = flow("name = \"r\"\nversion = 1\npriority = -3\n[[steps]]\nname = \"a\"\naction = \"shell\"\non = \"realtime\"\nparams = { argv = [\"true\"] }\n[[steps]]\nname = \"b\"\naction = \"shell\"\npriority = 9\nparams = { argv = [\"true\"] }\n");
        let mut q = ReadyQueue::default();
        q.push(Rank::new(&plain, 0, 100, AttemptId(1))); // oldest plain
        q.push(Rank::new(&plain, 0, 200, AttemptId(2)));
        q.push(Rank::new(&urgent, 0, 300, AttemptId(3)));
        q.push(Rank::new(&due, 0, 400, AttemptId(4)));
        q.push(Rank::new(&rt, 0, 500, AttemptId(5))); // realtime, low priority, newest
        q.push(Rank::new(&rt, 1, 500, AttemptId(6))); // same flow, cpu step, priority 9
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front().map(|r| r.attempt.0)).collect();
        assert_eq!(order, vec![5, 4, 6, 3, 1, 2]);
    }

    #[test]
    fn bad_priorities_and_deadlines_are_flow_errors() {
        let e = crate::flow::parse("name = \"p\"\nversion = 1\npriority = 5000\ndeadline = \"soon\"\n[[steps]]\nname = \"a\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\n", "t.toml", None).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:3: priority: 5000 is out of range"),
            "{e}"
        );
        assert!(e.contains("t.toml:4: deadline:"), "{e}");
    }
}
