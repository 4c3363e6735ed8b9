//! The validated, serialisable form of a flow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::ResourceRequest;

/// A validated flow definition. Stored as JSON next to its TOML source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowSpec {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub inputs: Vec<InputSpec>,
    /// In file order; `after` edges refer to these by name.
    pub steps: Vec<StepSpec>,
    /// Higher runs first among ready steps of the same class and deadline.
    #[serde(default)]
    pub priority: i32,
    /// Seconds after submission by which a run should be done: ready steps
    /// of runs with the earliest deadline are placed first.
    #[serde(default)]
    pub deadline_s: Option<f64>,
    /// Directories the server watches for new files, each starting runs.
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
}

/// A `[[trigger]]` table: new files in `dir` start runs of the flow (the
/// server runs it as `beamflow watch` would; see `crate::watch`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TriggerSpec {
    /// Absolute, on the server's machine.
    pub dir: String,
    pub pattern: String,
    pub recursive: bool,
    pub batch: usize,
    pub settle_s: f64,
    pub flush_after_s: Option<f64>,
    /// A stat scan at this interval instead of inotify.
    pub poll_s: Option<f64>,
    /// Flow input → value; strings are templates over `file`, `files`,
    /// `count` and `dir`, typed by the flow's input schema.
    pub input: serde_json::Map<String, Value>,
}

impl FlowSpec {
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

/// One declared input of a flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub ty: InputType,
    pub required: bool,
    pub default: Option<Value>,
    pub description: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    Path,
    String,
    Int,
    Float,
    Bool,
    List,
}

impl InputType {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "path" => Self::Path,
            "string" => Self::String,
            "int" => Self::Int,
            "float" => Self::Float,
            "bool" => Self::Bool,
            "list" => Self::List,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::String => "string",
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::List => "list",
        }
    }
}

/// What a step does.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Shell,
    Transfer,
    Publish,
    Kernel,
}

impl ActionKind {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "shell" => Self::Shell,
            "transfer" => Self::Transfer,
            "publish" => Self::Publish,
            "kernel" => Self::Kernel,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Transfer => "transfer",
            Self::Publish => "publish",
            Self::Kernel => "kernel",
        }
    }
    /// Parameters the action accepts (kernels declare their own).
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Self::Shell => &["argv", "script", "env", "cwd"],
            Self::Transfer => &["src", "dst", "verify"],
            Self::Publish => &["title", "fields", "files", "outputs", "units"],
            Self::Kernel => &[],
        }
    }
    /// Output keys every attempt of the action reports.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Self::Shell => &["exit_code", "stdout", "stderr"],
            Self::Transfer => &["dst", "files", "bytes", "copied", "skipped"],
            Self::Publish => &["record_id", "record"],
            Self::Kernel => &[],
        }
    }
    /// Column of the timing table the action's time is counted in.
    pub fn category(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Publish => "publish",
            Self::Shell | Self::Kernel => "compute",
        }
    }
}

/// One step of a flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepSpec {
    pub name: String,
    pub action: ActionKind,
    /// Set exactly when `action` is `kernel`.
    pub kernel: Option<String>,
    /// A JSON object whose strings are templates, rendered when the step is ready.
    pub params: Value,
    pub after: Vec<String>,
    /// A template expression; the step is skipped when it is false.
    pub when: Option<String>,
    pub retry: RetryPolicy,
    pub timeout_s: Option<f64>,
    pub resources: ResourceRequest,
    /// Logical target (`cpu`, `gpu`, `edge`, `realtime`, or a site's own).
    pub on: String,
    /// Output keys the step promises beyond the action's own (shell steps
    /// write them as JSON to `$BEAMFLOW_OUTPUTS`).
    pub outputs: Vec<String>,
    /// Overrides the flow's priority for this step.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Run the kernel in a process of its own rather than in the pilot, so
    /// a crash (abort, segfault, out of memory) fails this step instead of
    /// ending the pilot and everything else it runs. Costs a process start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolate: bool,
    /// Inputs the pilot copies into the task directory before the action
    /// starts, by name: each a template for a path, `REMOTE:/path` for data
    /// at another facility (the pilot's site config says how to reach it).
    /// The step's params see the local copies as `staged.NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage: BTreeMap<String, String>,
}

impl StepSpec {
    /// Every output key a later step may reference.
    pub fn output_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .action
            .outputs()
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(k) = self.kernel.as_deref().and_then(beamflow_kernels::find) {
            keys.extend(k.outputs().iter().map(|s| s.to_string()));
        }
        keys.extend(self.outputs.iter().cloned());
        keys
    }
}

/// How often and how patiently a failed step is tried again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means one attempt only.
    pub count: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub backoff_s: f64,
    pub max_backoff_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            count: 0,
            backoff_s: 1.0,
            max_backoff_s: 300.0,
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `n` (1-based).
    pub fn delay_s(&self, n: u32) -> f64 {
        let factor = 2f64.powi(n.saturating_sub(1).min(30) as i32);
        (self.backoff_s * factor).min(self.max_backoff_s)
    }
}
