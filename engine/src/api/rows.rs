//! The rows the API returns and the store reads: flows, runs with their
//! attempts and events, pilots and catalog records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AttemptState, PilotState, RunState};
use crate::flow::FlowSpec;
use crate::protocol::PilotInfo;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowRow {
    pub name: String,
    pub version: u32,
    pub path: String,
    pub registered_us: i64,
    pub spec: FlowSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRow {
    pub id: u64,
    pub flow: String,
    pub flow_version: u32,
    pub input: Value,
    pub dir: String,
    pub state: RunState,
    pub error: Option<String>,
    pub created_us: i64,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptRow {
    pub id: u64,
    pub run_id: u64,
    pub step: String,
    pub step_index: usize,
    pub number: u32,
    pub action: String,
    pub state: AttemptState,
    pub params: Option<Value>,
    pub pilot_id: Option<u64>,
    pub ready_us: Option<i64>,
    pub dispatched_us: Option<i64>,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub recorded_us: Option<i64>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub counts_retry: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRow {
    pub ts_us: i64,
    pub run_id: Option<u64>,
    pub attempt_id: Option<u64>,
    pub pilot_id: Option<u64>,
    pub kind: String,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunRow,
    pub attempts: Vec<AttemptRow>,
    pub events: Vec<EventRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PilotRow {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub info: PilotInfo,
    pub state: PilotState,
    pub reason: Option<String>,
    pub connected_us: i64,
    pub last_seen_us: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogRow {
    pub id: u64,
    pub run_id: u64,
    pub attempt_id: u64,
    pub flow: String,
    pub created_us: i64,
    pub record: Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub flow: Option<String>,
    /// Only runs with id >= since.
    pub since: Option<u64>,
    /// Only runs with id <= until.
    pub until: Option<u64>,
    pub limit: Option<usize>,
}
