//! What a pilot has free, counted the same way by the pilot (which starts
//! tasks) and by the server (which decides what to send it): both must
//! agree on what fits, or the server would push work that waits.
//!
//! A pilot holds one node, or — started with `--span-job` — every node of
//! its batch job. Single-node attempts share the pilot's own node (the
//! *head*) by cores, GPUs and memory and run there in-process. An attempt
//! asking for `nodes = K > 1` takes K whole nodes, which the pilot hands to
//! the site's launcher (srun, mpiexec, mpirun): the other nodes first, the
//! head last and only while nothing runs on it, so small steps keep a node
//! to run on beside a wide one whenever the job has a node to spare.

use super::{ResourceRequest, Resources};

/// What an attempt holds: the variant it runs as, and for a multi-node
/// attempt the nodes it took whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub variant: Resources,
    /// Whole nodes taken besides the head.
    pub others: u32,
    /// The head node taken whole.
    pub head: bool,
}

impl Charge {
    /// Holds nothing (an attempt the server has not learnt the size of).
    pub const NONE: Charge = Charge {
        variant: Resources::NONE,
        others: 0,
        head: false,
    };

    /// Nodes this attempt spans.
    pub fn nodes(&self) -> u32 {
        self.others + u32::from(self.head)
    }
}

/// The free part of a pilot's resources.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// What each node offers; `nodes` is how many the pilot holds.
    per_node: Resources,
    /// Used on the head by single-node attempts.
    head_used: Resources,
    /// The head lent whole to a multi-node attempt.
    head_lent: bool,
    /// Other nodes lent whole.
    others_lent: u32,
}

impl Capacity {
    pub fn new(per_node: Resources) -> Self {
        Capacity {
            per_node,
            head_used: Resources::NONE,
            head_lent: false,
            others_lent: 0,
        }
    }

    /// True when some variant of `req` fits this pilot when it is idle.
    pub fn could_ever_run(&self, req: &ResourceRequest) -> bool {
        req.variants
            .iter()
            .any(|v| v.fits(&self.per_node) && v.nodes <= self.per_node.nodes.max(1))
    }

    /// How the first variant of `req` that fits now would be charged.
    pub fn place(&self, req: &ResourceRequest) -> Option<Charge> {
        req.variants.iter().find_map(|v| self.place_variant(v))
    }

    fn place_variant(&self, v: &Resources) -> Option<Charge> {
        if !v.fits(&self.per_node) {
            return None;
        }
        if v.nodes <= 1 {
            let mut free = self.per_node;
            free.sub(&self.head_used);
            return (!self.head_lent && v.fits(&free)).then_some(Charge {
                variant: *v,
                others: 0,
                head: false,
            });
        }
        let others_free = self.per_node.nodes.saturating_sub(1 + self.others_lent);
        if v.nodes <= others_free {
            return Some(Charge {
                variant: *v,
                others: v.nodes,
                head: false,
            });
        }
        let head_idle = !self.head_lent && self.head_used.is_empty();
        (v.nodes == others_free + 1 && head_idle).then_some(Charge {
            variant: *v,
            others: others_free,
            head: true,
        })
    }

    /// What the head node has free for a single-node attempt.
    pub fn free(&self) -> Resources {
        if self.head_lent {
            return Resources::NONE;
        }
        let mut f = self.per_node;
        f.sub(&self.head_used);
        f.nodes = 1;
        f
    }

    pub fn take(&mut self, c: &Charge) {
        if c.variant.nodes <= 1 {
            self.head_used.add(&c.variant);
        } else {
            self.others_lent += c.others;
            self.head_lent |= c.head;
        }
    }

    pub fn give(&mut self, c: &Charge) {
        if c.variant.nodes <= 1 {
            self.head_used.sub(&c.variant);
        } else {
            self.others_lent = self.others_lent.saturating_sub(c.others);
            if c.head {
                self.head_lent = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: u32, nodes: u32) -> Resources {
        Resources {
            cpus,
            gpus: 0,
            memory_mb: 0,
            nodes,
            ranks_per_node: 1,
        }
    }

    fn req(v: Resources) -> ResourceRequest {
        ResourceRequest { variants: vec![v] }
    }

    #[test]
    fn a_one_node_pilot_counts_cores_and_never_runs_wide_steps() {
        let mut c = Capacity::new(res(4, 1));
        assert!(!c.could_ever_run(&req(res(1, 2))));
        assert!(!c.could_ever_run(&req(res(8, 1))));
        let a = c.place(&req(res(3, 1))).unwrap();
        c.take(&a);
        assert!(c.place(&req(res(2, 1))).is_none());
        let b = c.place(&req(res(1, 1))).unwrap();
        c.take(&b);
        c.give(&a);
        assert!(c.place(&req(res(3, 1))).is_some());
    }

    #[test]
    fn wide_steps_take_other_nodes_first_and_the_head_only_when_idle() {
        // Three nodes: the head and two others.
        let mut c = Capacity::new(res(2, 3));
        assert!(c.could_ever_run(&req(res(2, 3))));
        assert!(!c.could_ever_run(&req(res(2, 4))));
        let small = c.place(&req(res(1, 1))).unwrap();
        c.take(&small);
        // Two nodes come from the others; the head keeps its small step.
        let wide = c.place(&req(res(1, 2))).unwrap();
        assert_eq!((wide.others, wide.head, wide.nodes()), (2, false, 2));
        c.take(&wide);
        assert!(
            c.place(&req(res(1, 1))).is_some(),
            "the head has a core left"
        );
        assert!(c.place(&req(res(1, 2))).is_none());
        c.give(&wide);
        // All three need the head idle.
        assert!(c.place(&req(res(1, 3))).is_none());
        c.give(&small);
        let all = c.place(&req(res(1, 3))).unwrap();
        assert_eq!((all.others, all.head), (2, true));
        c.take(&all);
        assert!(c.place(&req(res(1, 1))).is_none(), "the head is lent whole");
        c.give(&all);
        assert!(c.place(&req(res(2, 1))).is_some());
    }
}
