//! Site configuration: where flows run. A flow says *what* runs and on which
//! logical target; the site config says what those targets are at a facility
//! (queue, account, node shape, walltime, how pilots are launched), which paths
//! transfers may touch, and which `site.*` variables templates see.
//!
//! Site-wide settings (account, filesystems, setup lines) are defaults that a
//! target may override; [`SiteConfig::effective`] resolves them, and that
//! resolved form is what job scripts and the allocation manager use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::home::expand_home;
use crate::resources::Resources;

/// The batch system pilots are submitted through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// No scheduler: pilots are started by hand.
    #[default]
    Local,
    Slurm,
    Pbs,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Local => "local",
            Scheduler::Slurm => "slurm",
            Scheduler::Pbs => "pbs",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub description: String,
    /// Project charged (`-A`), unless a target names its own.
    #[serde(default)]
    pub account: Option<String>,
    /// PBS `-l filesystems=` the jobs need (ALCF refuses jobs without it).
    #[serde(default)]
    pub filesystems: Vec<String>,
    /// Shell lines run on the first node before pilots start (modules, conda…).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Fast scratch space on compute nodes; `site.scratch` in templates.
    #[serde(default)]
    pub scratch: Option<String>,
    /// How pilots are started inside allocations.
    #[serde(default)]
    pub pilot: PilotLaunch,
    /// Exposed to templates as `site.NAME`.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    #[serde(default)]
    pub transfer: TransferPolicy,
    /// Logical targets; empty means the standard ones without limits.
    #[serde(default)]
    pub targets: BTreeMap<String, Target>,
}

/// Which paths `transfer` steps may read and write, and the far ends
/// (other facilities' data-transfer nodes) they may reach.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferPolicy {
    /// Absolute roots (`~` expands to the home directory). Empty: no restriction.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
    /// Far ends by name: a transfer's `src` or `dst` written `NAME:/path`
    /// is moved to or from remote NAME.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remotes: BTreeMap<String, Remote>,
}

/// A far end: another facility's data-transfer node reached over SSH with
/// rsync, or its Globus collection. Credentials live here, in the
/// facility's site config (a key or token *file*), or in the user's SSH
/// agent — never in a flow, the store or a log.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The backend: `rsync` (over SSH, the default: the facility-standard
    /// fallback) or `globus` (Globus Transfer through its REST API).
    #[serde(default)]
    pub backend: RemoteBackend,
    /// rsync: the far end's data-transfer host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// A private key file for this site's transfer account (default: the
    /// SSH agent and ~/.ssh, as `ssh` finds them).
    #[serde(default)]
    pub identity: Option<String>,
    /// The far end's host keys (default: ~/.ssh/known_hosts). Host keys are
    /// always checked: an unknown host is refused, never added.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Absolute roots at the far end that transfers may read and write;
    /// empty: no restriction. Checked on the path as written (no `..`).
    #[serde(default)]
    pub roots: Vec<String>,
    /// Bandwidth cap, KiB/s (rsync's --bwlimit), to share a link.
    #[serde(default)]
    pub bwlimit_kib: Option<u64>,
    /// globus: the far end's collection (endpoint) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// globus: this site's own collection id, the near end of each task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<String>,
    /// globus: the local directory this site's collection is rooted at
    /// (default `/`): with `/eagle`, the local path `/eagle/x` is `/x` to
    /// Globus. Collections rarely expose the whole filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_collection_root: Option<String>,
    /// globus: a file (mode 0600) holding a Transfer API access token. It
    /// is read when a transfer starts, so a renewed token needs no restart,
    /// and its content is never stored, sent to pilots or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// globus: the Transfer API's base URL (default
    /// `https://transfer.api.globus.org/v0.10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RemoteBackend {
    #[default]
    Rsync,
    Globus,
}

impl Remote {
    /// What is wrong with this remote's keys for its backend, as
    /// (key, problem) pairs: each backend's required keys present, the
    /// other backend's absent (a `host` on a Globus remote is a mistake
    /// worth naming, not something to ignore).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let rsync_keys = [
            ("host", self.host.is_some()),
            ("user", self.user.is_some()),
            ("port", self.port.is_some()),
            ("identity", self.identity.is_some()),
            ("known_hosts", self.known_hosts.is_some()),
            ("bwlimit_kib", self.bwlimit_kib.is_some()),
        ];
        let globus_keys = [
            ("endpoint", self.endpoint.is_some()),
            ("local_endpoint", self.local_endpoint.is_some()),
            (
                "local_collection_root",
                self.local_collection_root.is_some(),
            ),
            ("token_file", self.token_file.is_some()),
            ("api_url", self.api_url.is_some()),
        ];
        let (name, required, foreign): (&str, &[&'static str], &[(&'static str, bool)]) =
            match self.backend {
                RemoteBackend::Rsync => ("rsync", &["host"], &globus_keys),
                RemoteBackend::Globus => (
                    "globus",
                    &["endpoint", "local_endpoint", "token_file"],
                    &rsync_keys,
                ),
            };
        let given = |k: &str| {
            rsync_keys
                .iter()
                .chain(globus_keys.iter())
                .any(|(key, set)| *key == k && *set)
        };
        for k in required {
            if !given(k) {
                out.push((*k, format!("required for backend = \"{name}\"")));
            }
        }
        for (k, set) in foreign.iter() {
            if *set {
                out.push((*k, format!("not a key of backend = \"{name}\"")));
            }
        }
        for (k, v) in [
            ("endpoint", &self.endpoint),
            ("local_endpoint", &self.local_endpoint),
        ] {
            if let Some(id) = v {
                if !is_uuid(id) {
                    out.push((
                        k,
                        format!("`{id}` is not a Globus collection id (a UUID, as the Globus web app shows it)"),
                    ));
                }
            }
        }
        if let Some(r) = &self.local_collection_root {
            if !r.starts_with('/') {
                out.push((
                    "local_collection_root",
                    format!("`{r}` must be an absolute path"),
                ));
            }
        }
        out
    }
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

impl TransferPolicy {
    /// Roots with `~` expanded.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.allowed_roots.iter().map(|r| expand_home(r)).collect()
    }
}

/// How the pilot command is found and tuned on compute nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PilotLaunch {
    /// The `beamflow` executable as compute nodes see it (default: the
    /// server's own executable, which suits a shared filesystem).
    #[serde(default)]
    pub command: Option<String>,
    /// Server URL as compute nodes reach it (default: the server's own).
    #[serde(default)]
    pub server_url: Option<String>,
    /// Tasks a pilot accepts beyond its free resources. Small, so that work
    /// still waiting is visible to the allocation manager as demand.
    #[serde(default)]
    pub prefetch: Option<u32>,
    /// Drain this long before the walltime ends (default 60s).
    #[serde(default)]
    pub drain_margin: Option<String>,
}

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

impl SiteConfig {
    /// A permissive site for laptops and tests: every standard target, no limits.
    pub fn local() -> Self {
        SiteConfig {
            name: "local".to_string(),
            scheduler: Scheduler::Local,
            description: "this machine".to_string(),
            account: None,
            filesystems: Vec::new(),
            setup: Vec::new(),
            scratch: None,
            pilot: PilotLaunch::default(),
            vars: BTreeMap::new(),
            transfer: TransferPolicy::default(),
            targets: BTreeMap::new(),
        }
    }

    /// Reads and fully validates a site config.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read site config: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates; errors read `FILE:LINE: key: problem`.
    pub fn parse(text: &str, file: &str) -> anyhow::Result<Self> {
        let site: SiteConfig = crate::tomlfile::from_str(text).map_err(|e| {
            let mut line = e.line(text);
            // An unknown key is reported at its table: point at the key.
            if let Some(key) = e
                .message
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
            {
                if let Some(i) = text.lines().enumerate().skip(line - 1).find_map(|(i, l)| {
                    let (k, _) = l.split_once('=')?;
                    (k.trim().trim_matches('"') == key).then_some(i)
                }) {
                    line = i + 1;
                }
            }
            match e.key.as_str() {
                "" => anyhow::anyhow!("{file}:{line}: {}", e.message),
                key => anyhow::anyhow!("{file}:{line}: {key}: {}", e.message),
            }
        })?;
        let problems = site.problems();
        if let Some(p) = problems.first() {
            let line = locate(text, p.table.as_deref(), &p.key);
            let more = match problems.len() {
                1 => String::new(),
                n => format!(
                    " (and {} more problem{})",
                    n - 1,
                    if n > 2 { "s" } else { "" }
                ),
            };
            let key = match &p.table {
                Some(t) => format!("{t}.{}", p.key),
                None => p.key.clone(),
            };
            anyhow::bail!("{file}:{line}: {key}: {}{more}", p.message);
        }
        Ok(site)
    }

    /// Every problem `parse` would report, in file order of keys.
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |table: Option<String>, key: &str, message: String| {
            out.push(Problem {
                table,
                key: key.to_string(),
                message,
            })
        };
        if self.name.trim().is_empty() || !self.name.chars().all(name_char) {
            bad(
                None,
                "name",
                format!(
                    "`{}` is not a site name (letters, digits, - and _)",
                    self.name
                ),
            );
        }
        if let Some(d) = &self.pilot.drain_margin {
            if let Err(e) = crate::units::parse_duration(d) {
                bad(Some("pilot".into()), "drain_margin", e);
            }
        }
        for (name, r) in &self.transfer.remotes {
            for (key, message) in r.problems() {
                bad(Some(format!("transfer.remotes.{name}")), key, message);
            }
        }
        for (name, t) in &self.targets {
            let table = Some(format!("targets.{name}"));
            if !name.chars().all(name_char) {
                bad(
                    table.clone(),
                    "",
                    format!("`{name}` is not a target name (letters, digits, - and _)"),
                );
            }
            let walltime = t.walltime.as_deref().map(parse_walltime);
            if let Some(Err(e)) = &walltime {
                bad(table.clone(), "walltime", e.clone());
            }
            let max_walltime = t.max_walltime.as_deref().map(parse_walltime);
            if let Some(Err(e)) = &max_walltime {
                bad(table.clone(), "max_walltime", e.clone());
            }
            if let (Some(Ok(w)), Some(Ok(m))) = (&walltime, &max_walltime) {
                if w > m {
                    bad(
                        table.clone(),
                        "walltime",
                        format!(
                            "{} is longer than max_walltime {}",
                            fmt_walltime(*w),
                            fmt_walltime(*m)
                        ),
                    );
                }
            }
            if let Some(m) = &t.memory_per_node {
                if let Err(e) = crate::units::parse_memory_mb(m) {
                    bad(table.clone(), "memory_per_node", e);
                }
            }
            if t.nodes == Some(0) {
                bad(table.clone(), "nodes", "must be at least 1".into());
            }
            if let (Some(n), Some(m)) = (t.nodes, t.max_nodes) {
                if n > m {
                    bad(
                        table.clone(),
                        "nodes",
                        format!("{n} is more than max_nodes {m}"),
                    );
                }
            }
            if t.cpus_per_node == Some(0) {
                bad(table.clone(), "cpus_per_node", "must be at least 1".into());
            }
            // Flows ask for at most a million of anything; a node with more
            // GPUs than 1024 or more threads per core than 16 is a typo (and
            // job scripts list every GPU index).
            for (key, v, max) in [
                ("nodes", t.nodes, 1_000_000),
                ("max_nodes", t.max_nodes, 1_000_000),
                ("cpus_per_node", t.cpus_per_node, 1_000_000),
                ("gpus_per_node", t.gpus_per_node, 1024),
                ("threads_per_core", t.threads_per_core, 16),
            ] {
                if let Some(v) = v.filter(|&v| v > max) {
                    bad(table.clone(), key, format!("{v} is more than {max}"));
                }
            }
            if t.threads_per_core == Some(0) {
                bad(
                    table.clone(),
                    "threads_per_core",
                    "must be at least 1".into(),
                );
            }
            let scheduler = if t.manual {
                Scheduler::Local
            } else {
                self.scheduler
            };
            match scheduler {
                Scheduler::Local => {
                    for (key, set) in [
                        ("queue", t.queue.is_some()),
                        ("qos", t.qos.is_some()),
                        ("constraint", t.constraint.is_some()),
                        ("reservation", t.reservation.is_some()),
                        ("select", t.select.is_some()),
                        ("launcher", t.launcher.is_some()),
                        ("pilot_per", t.pilot_per != PilotPer::Node),
                    ] {
                        if set {
                            bad(
                                table.clone(),
                                key,
                                "means nothing for pilots started by hand (scheduler = \"local\" or manual = true)"
                                    .into(),
                            );
                        }
                    }
                }
                Scheduler::Pbs => {
                    if t.account.is_none() && self.account.is_none() {
                        bad(
                            table.clone(),
                            "account",
                            "PBS sites need an account (-A), here or at the top of the file".into(),
                        );
                    }
                    if t.walltime.is_none() {
                        bad(
                            table.clone(),
                            "walltime",
                            "PBS needs a walltime (-l walltime=HH:MM:SS)".into(),
                        );
                    }
                    for (key, set) in [
                        ("qos", t.qos.is_some()),
                        ("constraint", t.constraint.is_some()),
                    ] {
                        if set {
                            bad(table.clone(), key, "is a Slurm option; PBS has none".into());
                        }
                    }
                }
                Scheduler::Slurm => {
                    if t.walltime.is_none() {
                        bad(
                            table.clone(),
                            "walltime",
                            "Slurm targets need a walltime (-t), or jobs get the partition's maximum"
                                .into(),
                        );
                    }
                    if t.select.is_some() {
                        bad(
                            table.clone(),
                            "select",
                            "is a PBS option; use constraint on Slurm".into(),
                        );
                    }
                }
            }
            for d in &t.directives {
                if d.contains('#') || d.contains('\n') {
                    bad(
                        table.clone(),
                        "directives",
                        format!("`{d}`: one option per entry, no comments (schedulers read a trailing comment as part of the option)"),
                    );
                }
            }
        }
        out
    }

    /// The target with site defaults applied.
    pub fn effective(&self, target: &str) -> anyhow::Result<EffectiveTarget> {
        let t = match self.targets.get(target) {
            Some(t) => t.clone(),
            None if self.targets.is_empty() && STANDARD_TARGETS.contains(&target) => {
                Target::default()
            }
            None => anyhow::bail!(
                "site `{}` has no target `{target}` (it has: {})",
                self.name,
                self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        let mut setup = self.setup.clone();
        setup.extend(t.setup.iter().cloned());
        let walltime_s = match &t.walltime {
            Some(w) => parse_walltime(w).map_err(|e| anyhow::anyhow!("walltime: {e}"))?,
            None => DEFAULT_WALLTIME_S,
        };
        Ok(EffectiveTarget {
            site: self.name.clone(),
            target: target.to_string(),
            scheduler: self.scheduler,
            manual: t.manual,
            account: t.account.or_else(|| self.account.clone()),
            queue: t.queue,
            qos: t.qos,
            constraint: t.constraint,
            reservation: t.reservation,
            filesystems: t.filesystems.unwrap_or_else(|| self.filesystems.clone()),
            select: t.select,
            nodes: t.nodes.unwrap_or(1),
            max_nodes: t.max_nodes,
            walltime_s,
            max_walltime_s: t
                .max_walltime
                .as_deref()
                .and_then(|m| parse_walltime(m).ok()),
            cpus_per_node: t.cpus_per_node,
            threads_per_core: t.threads_per_core.unwrap_or(1),
            gpus_per_node: t.gpus_per_node,
            gpu_env: t.gpu_env,
            memory_per_node: t.memory_per_node,
            launcher: t.launcher,
            pilot_per: t.pilot_per,
            setup,
            directives: t.directives,
            scratch: t.scratch.or_else(|| self.scratch.clone()),
            pilot: self.pilot.clone(),
            preemptable: t.preemptable,
        })
    }

    /// The `site` object templates see.
    pub fn template_vars(&self) -> Value {
        let mut m: serde_json::Map<String, Value> = self.vars.clone().into_iter().collect();
        m.insert("name".to_string(), Value::String(self.name.clone()));
        if let Some(s) = &self.scratch {
            m.entry("scratch".to_string())
                .or_insert_with(|| Value::String(s.clone()));
        }
        Value::Object(m)
    }
}

/// Finds a site config by name (`polaris`) or path (`./my-site.toml`).
///
/// Names are looked up in `$BEAMFLOW_SITE_DIR`, `./site-configs`, and the
/// `site-configs` folder of the source tree or installation the running
/// binary belongs to.
pub fn find(name_or_path: &str) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        return if as_path.is_file() {
            Ok(as_path.to_path_buf())
        } else {
            Err(anyhow::anyhow!("{name_or_path}: no such site config file"))
        };
    }
    let file = format!("{name_or_path}.toml");
    let dirs = site_dirs();
    for d in &dirs {
        let p = d.join(&file);
        if p.is_file() {
            return Ok(p);
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    anyhow::bail!(
        "no site config `{name_or_path}`: looked for {file} in {}; set BEAMFLOW_SITE_DIR or give a path",
        looked.join(", ")
    )
}

fn site_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("BEAMFLOW_SITE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("site-configs"));
    if let Ok(exe) = std::env::current_exe() {
        // target/{release,debug}/beamflow in a source tree; PREFIX/bin/beamflow installed.
        for up in exe.ancestors().skip(1).take(4) {
            for sub in ["site-configs", "share/beamflow/site-configs"] {
                let d = up.join(sub);
                if d.is_dir() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

/// `HH:MM:SS`, `MM:SS`, `D-HH:MM:SS` (Slurm), or a duration such as `30m`.
pub fn parse_walltime(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a walltime; write HH:MM:SS or e.g. \"30m\", \"2h\"");
    if t.contains(':') {
        let (days, rest) = match t.split_once('-') {
            Some((d, r)) => (d.parse::<u64>().map_err(|_| bad())?, r),
            None => (0, t),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let mut secs = 0u64;
        for p in &parts {
            let v = p.parse::<u64>().map_err(|_| bad())?;
            secs = secs
                .checked_mul(60)
                .and_then(|s| s.checked_add(v))
                .ok_or_else(bad)?;
        }
        let total = days
            .checked_mul(86400)
            .and_then(|d| d.checked_add(secs))
            .ok_or_else(bad)?;
        if total as f64 > crate::units::MAX_DURATION_S {
            return Err(format!("`{s}` is longer than a year"));
        }
        return Ok(total);
    }
    let secs = match crate::units::parse_duration(t) {
        Ok(secs) => secs,
        Err(e) if e.ends_with("is longer than a year") => return Err(e),
        Err(_) => return Err(bad()),
    };
    if secs < 1.0 {
        return Err(bad());
    }
    Ok(secs.ceil() as u64)
}

/// `HH:MM:SS`, what both PBS and Slurm accept.
pub fn fmt_walltime(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

struct Problem {
    /// `targets.gpu`, `pilot`, or `None` for top-level keys.
    table: Option<String>,
    key: String,
    message: String,
}

/// Line of `key` inside `[table]` (or of the table header when the key is
/// absent, or line 1): enough to point an editor at the problem.
fn locate(text: &str, table: Option<&str>, key: &str) -> usize {
    let mut current: Option<String> = None;
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = Some(h.trim().trim_matches(['[', ']']).trim().to_string());
            if current.as_deref() == table {
                header_line = Some(i + 1);
            }
            continue;
        }
        if current.as_deref() == table && !key.is_empty() {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return i + 1;
                }
            }
        }
    }
    header_line.unwrap_or(1)
}

/// The accounts of the example configs in site-configs/, which a facility
/// replaces with its project (`beamflow doctor --site` says so).
pub const PLACEHOLDER_ACCOUNTS: &[&str] = &["MyProject", "ABC123", "m1234", "m1234_g"];

/// Targets every site understands; site configs may add their own.
pub const STANDARD_TARGETS: &[&str] = &["cpu", "gpu", "edge", "realtime"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltimes() {
        assert_eq!(parse_walltime("01:00:00"), Ok(3600));
        assert_eq!(parse_walltime("0:30:00"), Ok(1800));
        assert_eq!(parse_walltime("05:00"), Ok(300));
        assert_eq!(parse_walltime("1-00:00:00"), Ok(86400));
        assert_eq!(parse_walltime("30m"), Ok(1800));
        assert_eq!(parse_walltime("2h"), Ok(7200));
        assert!(parse_walltime("1:xx:00").is_err());
        assert!(parse_walltime("soon").is_err());
        assert_eq!(parse_walltime("365-00:00:00"), Ok(365 * 86400));
        assert_eq!(
            parse_walltime("99999999999999999:00:00"),
            Err("`99999999999999999:00:00` is not a walltime; write HH:MM:SS or e.g. \"30m\", \"2h\"".into())
        );
        assert_eq!(
            parse_walltime("366-00:00:00"),
            Err("`366-00:00:00` is longer than a year".into())
        );
        assert_eq!(
            parse_walltime("400d"),
            Err("`400d` is longer than a year".into())
        );
        assert_eq!(fmt_walltime(3723), "01:02:03");
        assert_eq!(fmt_walltime(90000), "25:00:00");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "name = \"x\"\nscheduler = \"pbs\"\naccount = \"A\"\n\n[targets.gpu]\nqueue = \"debug\"\nwalltime = \"1:zz:00\"\n";
        let e = SiteConfig::parse(text, "x.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "x.toml:7: targets.gpu.walltime: `1:zz:00` is not a walltime; write HH:MM:SS or e.g. \"30m\", \"2h\""
        );
        let text = "name = \"x\"\nscheduler = \"pbs\"\n[targets.cpu]\nwalltime = \"10m\"\n";
        let e = SiteConfig::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:3: targets.cpu.account: PBS sites need an account"),
            "{e}"
        );
        let text = "name = \"x\"\nscheduler = \"sge\"\n";
        let e = SiteConfig::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:2: scheduler: unknown variant `sge`"),
            "{e}"
        );
        let text = "name = \"x\"\n[targets.cpu]\nqueu = \"debug\"\n";
        let e = SiteConfig::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:3: targets.cpu: unknown field `queu`"),
            "{e}"
        );
        let text = "name = \"x\"\nscheduler = \"slurm\"\n[targets.cpu]\nwalltime = \"1h\"\nnodes = 4\nmax_nodes = 2\n";
        let e = SiteConfig::parse(text, "x.toml").unwrap_err().to_string();
        assert_eq!(e, "x.toml:5: targets.cpu.nodes: 4 is more than max_nodes 2");
    }

    /// Each transfer backend's keys: the required ones named when absent,
    /// the other backend's named when present, ids and roots checked.
    #[test]
    fn remotes_are_checked_for_their_backend() {
        let parse = |remote: &str| {
            let text = format!("name = \"x\"\n\n[transfer.remotes.aps]\n{remote}");
            SiteConfig::parse(&text, "x.toml").map_err(|e| e.to_string())
        };
        let ok = parse(
            "backend = \"globus\"\nendpoint = \"0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f\"\n\
             local_endpoint = \"6F1C1A52-1B2D-4C3E-9F4A-0A1B2C3D4E5F\"\n\
             token_file = \"~/.beamflow/globus-token\"\nlocal_collection_root = \"/eagle\"\n",
        )
        .unwrap();
        assert_eq!(ok.transfer.remotes["aps"].backend, RemoteBackend::Globus);
        assert_eq!(
            parse("user = \"s8id\"\n").unwrap_err(),
            "x.toml:3: transfer.remotes.aps.host: required for backend = \"rsync\""
        );
        assert_eq!(
            parse("host = \"dtn\"\ntoken_file = \"t\"\n").unwrap_err(),
            "x.toml:5: transfer.remotes.aps.token_file: not a key of backend = \"rsync\""
        );
        let e =
            parse("backend = \"globus\"\nhost = \"dtn\"\nendpoint = \"aps#dtn\"\n").unwrap_err();
        assert_eq!(
            e,
            "x.toml:3: transfer.remotes.aps.local_endpoint: required for backend = \"globus\" \
             (and 3 more problems)"
        );
        let e = parse(
            "backend = \"globus\"\nendpoint = \"aps#dtn\"\n\
             local_endpoint = \"0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f\"\ntoken_file = \"t\"\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "x.toml:5: transfer.remotes.aps.endpoint: `aps#dtn` is not a Globus collection id"
            ),
            "{e}"
        );
        let e = parse(
            "backend = \"globus\"\nendpoint = \"0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f\"\n\
             local_endpoint = \"0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f\"\ntoken_file = \"t\"\n\
             local_collection_root = \"eagle\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "x.toml:8: transfer.remotes.aps.local_collection_root: `eagle` must be an absolute path"
        );
    }

    #[test]
    fn effective_fills_site_defaults() {
        let text = "name = \"x\"\nscheduler = \"pbs\"\naccount = \"A\"\nfilesystems = [\"home\", \"eagle\"]\nsetup = [\"module load x\"]\n[targets.gpu]\nwalltime = \"30m\"\nsetup = [\"export Y=1\"]\n[targets.debug]\naccount = \"B\"\nwalltime = \"10m\"\nfilesystems = [\"home\"]\n";
        let s = SiteConfig::parse(text, "x.toml").unwrap();
        let g = s.effective("gpu").unwrap();
        assert_eq!(g.account.as_deref(), Some("A"));
        assert_eq!(g.filesystems, vec!["home", "eagle"]);
        assert_eq!(g.setup, vec!["module load x", "export Y=1"]);
        assert_eq!(g.walltime_s, 1800);
        assert_eq!(g.nodes, 1);
        let d = s.effective("debug").unwrap();
        assert_eq!(d.account.as_deref(), Some("B"));
        assert_eq!(d.filesystems, vec!["home"]);
        let e = s.effective("cpu").unwrap_err().to_string();
        assert_eq!(e, "site `x` has no target `cpu` (it has: debug, gpu)");
    }
}
