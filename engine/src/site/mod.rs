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

mod target;
mod transfer;

pub use target::{EffectiveTarget, PilotPer, Target, DEFAULT_WALLTIME_S};
pub use transfer::{Remote, RemoteBackend, TransferPolicy};

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
