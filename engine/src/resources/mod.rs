//! Resources: what a step asks for ([`ResourceRequest`], one or more
//! alternatives) and what a pilot has free ([`capacity`]).

pub mod capacity;

use serde::{Deserialize, Serialize};

/// A resource request: one or more alternatives, the first that fits wins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct ResourceRequest {
    pub variants: Vec<Resources>,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        ResourceRequest {
            variants: vec![Resources::default()],
        }
    }
}

/// Amounts of each resource kind. A step on `nodes > 1` takes that many
/// whole nodes, each offering at least `cpus`, `gpus` and `memory_mb`, and
/// runs `ranks_per_node` MPI ranks on each (see [`capacity`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpus: u32,
    pub gpus: u32,
    pub memory_mb: u64,
    pub nodes: u32,
    #[serde(default = "one")]
    pub ranks_per_node: u32,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            gpus: 0,
            memory_mb: 0,
            nodes: 1,
            ranks_per_node: 1,
        }
    }
}

impl Resources {
    /// Nothing at all: the starting point of sums.
    pub const NONE: Resources = Resources {
        cpus: 0,
        gpus: 0,
        memory_mb: 0,
        nodes: 1,
        ranks_per_node: 1,
    };

    /// No cores, GPUs or memory.
    pub fn is_empty(&self) -> bool {
        self.cpus == 0 && self.gpus == 0 && self.memory_mb == 0
    }

    /// True when `self` fits inside `avail` (node count aside).
    pub fn fits(&self, avail: &Resources) -> bool {
        self.cpus <= avail.cpus && self.gpus <= avail.gpus && self.memory_mb <= avail.memory_mb
    }
    pub fn add(&mut self, o: &Resources) {
        self.cpus += o.cpus;
        self.gpus += o.gpus;
        self.memory_mb += o.memory_mb;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpus = self.cpus.saturating_sub(o.cpus);
        self.gpus = self.gpus.saturating_sub(o.gpus);
        self.memory_mb = self.memory_mb.saturating_sub(o.memory_mb);
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cpus", self.cpus)?;
        if self.gpus > 0 {
            write!(f, " + {} gpus", self.gpus)?;
        }
        if self.memory_mb > 0 {
            write!(f, " + {} MB", self.memory_mb)?;
        }
        if self.nodes > 1 {
            write!(f, " per node on {} nodes", self.nodes)?;
            if self.ranks_per_node > 1 {
                write!(f, ", {} ranks each", self.ranks_per_node)?;
            }
        }
        Ok(())
    }
}
