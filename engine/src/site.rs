//! Site configuration: where flows run. A flow says *what* runs and on which
//! logical target; the site config says what those targets are at a facility,
//! which paths transfers may touch, and which `site.*` variables templates see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::Resources;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    #[serde(default)]
    pub description: String,
    /// Exposed to templates as `site.NAME`.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    #[serde(default)]
    pub transfer: TransferPolicy,
    /// Logical targets; empty means the standard ones without limits.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetLimits>,
}

fn default_scheduler() -> String {
    "local".to_string()
}

/// Which paths `transfer` steps may read and write.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferPolicy {
    /// Absolute roots (`~` expands to the home directory). Empty: no restriction.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
}

impl TransferPolicy {
    /// Roots with `~` expanded.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.allowed_roots.iter().map(|r| expand_home(r)).collect()
    }
}

/// What one node of a target offers; requests beyond it can never run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetLimits {
    #[serde(default)]
    pub cpus_per_node: Option<u32>,
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    #[serde(default)]
    pub memory_per_node: Option<String>,
    #[serde(default)]
    pub max_nodes: Option<u32>,
}

impl TargetLimits {
    pub fn admits(&self, r: &Resources) -> bool {
        let mem_ok = match self
            .memory_per_node
            .as_deref()
            .map(crate::flow::parse_memory_mb)
        {
            Some(Ok(mb)) => r.memory_mb <= mb,
            _ => true,
        };
        self.cpus_per_node.is_none_or(|c| r.cpus <= c)
            && self.gpus_per_node.is_none_or(|g| r.gpus <= g)
            && self.max_nodes.is_none_or(|n| r.nodes <= n)
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
        parts.join(", ")
    }
}

impl SiteConfig {
    /// A permissive site for laptops and tests: every standard target, no limits.
    pub fn local() -> Self {
        SiteConfig {
            name: "local".to_string(),
            scheduler: "local".to_string(),
            description: "this machine".to_string(),
            vars: BTreeMap::new(),
            transfer: TransferPolicy::default(),
            targets: BTreeMap::new(),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read site config: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(1);
            anyhow::anyhow!("{file}:{line}: {}", e.message().trim())
        })
    }

    /// The `site` object templates see.
    pub fn template_vars(&self) -> Value {
        let mut m: serde_json::Map<String, Value> = self.vars.clone().into_iter().collect();
        m.insert("name".to_string(), Value::String(self.name.clone()));
        Value::Object(m)
    }
}

pub fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest.trim_start_matches('/'));
        }
    }
    PathBuf::from(p)
}
