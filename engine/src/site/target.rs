//! A site's logical targets (`cpu`, `gpu`, `realtime`, …): what a target
//! declares, and the effective form with the site's defaults filled in
//! that job scripts and the allocation manager use.

use serde::{Deserialize, Serialize};

use super::{fmt_walltime, PilotLaunch, Scheduler};
use crate::resources::Resources;

/// How a target's pilot jobs place pilots on their nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PilotPer {
    /// One pilot per node; every step runs on one node.
    #[default]
    Node,
    /// One pilot holds every node of the job: steps with `nodes > 1` run
    /// across them as MPI ranks started by the site's launcher (srun on
    /// Slurm, mpiexec on PBS, with `launcher` flags); single-node steps
    /// run on the pilot's own node.
    Job,
}

/// One logical target (`cpu`, `gpu`, `realtime`, `debug`…) at a facility:
/// where its jobs go and what one node offers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Pilots for this target are started by hand (on a login or data
    /// transfer node, for staging and publishing), never submitted.
    #[serde(default)]
    pub manual: bool,
    /// PBS queue (`-q`) or Slurm partition (`-p`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Slurm QOS (`-q`).
    #[serde(default)]
    pub qos: Option<String>,
    /// Slurm constraint (`-C`), e.g. `gpu` on Perlmutter.
    #[serde(default)]
    pub constraint: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    /// A standing reservation: Slurm `--reservation`, PBS reservation queue.
    #[serde(default)]
    pub reservation: Option<String>,
    #[serde(default)]
    pub filesystems: Option<Vec<String>>,
    /// Extra PBS `select` resources, e.g. `system=polaris`.
    #[serde(default)]
    pub select: Option<String>,
    /// Nodes per allocation (default 1).
    #[serde(default)]
    pub nodes: Option<u32>,
    /// Largest allocation the queue accepts, in nodes.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// Default walltime of an allocation, `HH:MM:SS` or `30m`.
    #[serde(default)]
    pub walltime: Option<String>,
    /// Longest walltime the queue accepts.
    #[serde(default)]
    pub max_walltime: Option<String>,
    /// Cores one node offers to tasks.
    #[serde(default)]
    pub cpus_per_node: Option<u32>,
    /// Hardware threads per core the scheduler counts as CPUs (2 on
    /// Perlmutter, where `-c` counts threads): `-c` = cores x this.
    #[serde(default)]
    pub threads_per_core: Option<u32>,
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    /// The variable that restricts a task to its GPUs (default
    /// `CUDA_VISIBLE_DEVICES`; `ROCR_VISIBLE_DEVICES` on AMD,
    /// `ZE_AFFINITY_MASK` on Intel GPUs).
    #[serde(default)]
    pub gpu_env: Option<String>,
    #[serde(default)]
    pub memory_per_node: Option<String>,
    /// Extra launcher flags (mpiexec on PBS, srun on Slurm), e.g. CPU binding.
    #[serde(default)]
    pub launcher: Option<String>,
    /// `"node"` (default) or `"job"`: see [`PilotPer`].
    #[serde(default)]
    pub pilot_per: PilotPer,
    /// Setup lines run after the site's.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Extra scheduler options, verbatim (`-l place=scatter`, `--exclusive`).
    #[serde(default)]
    pub directives: Vec<String>,
    #[serde(default)]
    pub scratch: Option<String>,
    /// Jobs in this queue may be killed at any time to make room (Polaris
    /// `preemptable`, a Slurm preemptible QOS): job scripts are marked
    /// rerunnable, and a preempted pilot's steps go back without counting
    /// against them, placed at another site first.
    #[serde(default)]
    pub preemptable: bool,
}

impl Target {
    pub fn admits(&self, r: &Resources) -> bool {
        let mem_ok = match self
            .memory_per_node
            .as_deref()
            .map(crate::units::parse_memory_mb)
        {
            Some(Ok(mb)) => r.memory_mb <= mb,
            _ => true,
        };
        self.cpus_per_node.is_none_or(|c| r.cpus <= c)
            && self.gpus_per_node.is_none_or(|g| r.gpus <= g)
            && self.max_nodes.is_none_or(|n| r.nodes <= n)
            && (r.nodes <= 1
                || (self.pilot_per == PilotPer::Job && r.nodes <= self.nodes.unwrap_or(1)))
            && mem_ok
    }
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cpus_per_node {
            parts.push(format!("{c} cpus/node"));
        }
        if let Some(g) = self.gpus_per_node {
            parts.push(format!("{g} gpus/node"));
        }
        if let Some(m) = &self.memory_per_node {
            parts.push(format!("{m}/node"));
        }
        if let Some(n) = self.max_nodes {
            parts.push(format!("at most {n} nodes"));
        }
        match self.pilot_per {
            PilotPer::Node => {}
            PilotPer::Job => {
                parts.push(format!("steps on up to {} nodes", self.nodes.unwrap_or(1)))
            }
        }
        parts.join(", ")
    }
}

/// A target with the site's defaults filled in: everything a job script needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EffectiveTarget {
    pub site: String,
    pub target: String,
    pub scheduler: Scheduler,
    pub manual: bool,
    pub account: Option<String>,
    pub queue: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    pub reservation: Option<String>,
    pub filesystems: Vec<String>,
    pub select: Option<String>,
    pub nodes: u32,
    pub max_nodes: Option<u32>,
    /// Seconds.
    pub walltime_s: u64,
    pub max_walltime_s: Option<u64>,
    pub cpus_per_node: Option<u32>,
    pub threads_per_core: u32,
    pub gpus_per_node: Option<u32>,
    pub gpu_env: Option<String>,
    pub memory_per_node: Option<String>,
    pub launcher: Option<String>,
    pub pilot_per: PilotPer,
    pub setup: Vec<String>,
    pub directives: Vec<String>,
    pub scratch: Option<String>,
    pub pilot: PilotLaunch,
    /// See [`Target::preemptable`].
    #[serde(default)]
    pub preemptable: bool,
}

impl EffectiveTarget {
    /// Whether a job of `nodes` nodes for `walltime_s` seconds can be
    /// submitted for this target at all; the reason if not.
    pub fn check_job(&self, nodes: u32, walltime_s: u64) -> Result<(), String> {
        if self.scheduler == Scheduler::Local {
            return Err(format!(
                "site `{}` has no batch scheduler: start pilots with `beamflow pilot`",
                self.site
            ));
        }
        if self.manual {
            return Err(format!(
                "target `{}` of site `{}` is served by pilots started by hand (manual = true)",
                self.target, self.site
            ));
        }
        if nodes == 0 {
            return Err("an allocation needs at least one node".into());
        }
        if let Some(m) = self.max_nodes.filter(|&m| nodes > m) {
            return Err(format!(
                "{nodes} nodes: target `{}` of site `{}` takes at most {m}",
                self.target, self.site
            ));
        }
        if let Some(m) = self.max_walltime_s.filter(|&m| walltime_s > m) {
            return Err(format!(
                "walltime {}: target `{}` of site `{}` allows at most {}",
                fmt_walltime(walltime_s),
                self.target,
                self.site,
                fmt_walltime(m)
            ));
        }
        if self.scheduler == Scheduler::Pbs && self.account.is_none() {
            return Err("PBS jobs need an account: set `account` in the site config".into());
        }
        Ok(())
    }
}

/// Walltime of an allocation when neither the target nor the request says.
pub const DEFAULT_WALLTIME_S: u64 = 3600;
