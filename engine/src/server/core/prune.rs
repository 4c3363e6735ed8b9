//! Pruning: `beamflow admin prune` hands the core each chunk of old runs,
//! so that a run the core has made active again (a user's retry) stays.

use super::Core;
use crate::api::RunId;
use crate::store::Op;

impl Core {
    /// Deletes those of `runs` that are not live; the store deletes only
    /// the ones that finished before `before_us`. Returns how many went to
    /// the store.
    pub(super) fn prune(&mut self, mut runs: Vec<RunId>, before_us: i64) -> usize {
        runs.retain(|id| !self.runs.contains_key(id));
        let n = runs.len();
        self.batch.ops.push(Op::PruneRuns { runs, before_us });
        n
    }
}
