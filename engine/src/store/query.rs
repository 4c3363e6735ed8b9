//! Reads: the rows the API and the CLI show, and what the server reloads on start.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::FlowSpec;

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
    pub state: String,
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
    pub state: String,
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
    pub info: Value,
    pub state: String,
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
    pub state: Option<String>,
    pub flow: Option<String>,
    /// Only runs with id >= since.
    pub since: Option<u64>,
    /// Only runs with id <= until.
    pub until: Option<u64>,
    pub limit: Option<usize>,
}

fn json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn flow_row(r: &Row, with_source: bool) -> rusqlite::Result<FlowRow> {
    let spec: String = r.get("spec")?;
    Ok(FlowRow {
        name: r.get("name")?,
        version: r.get("version")?,
        path: r.get("path")?,
        registered_us: r.get("registered_us")?,
        spec: serde_json::from_str(&spec).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        source: if with_source {
            Some(r.get("source")?)
        } else {
            None
        },
    })
}

fn run_row(r: &Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get::<_, i64>("id")? as u64,
        flow: r.get("flow")?,
        flow_version: r.get("flow_version")?,
        input: json(r.get("input")?).unwrap_or(Value::Null),
        dir: r.get("dir")?,
        state: r.get("state")?,
        error: r.get("error")?,
        created_us: r.get("created_us")?,
        started_us: r.get("started_us")?,
        finished_us: r.get("finished_us")?,
    })
}

fn attempt_row(r: &Row) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        id: r.get::<_, i64>("id")? as u64,
        run_id: r.get::<_, i64>("run_id")? as u64,
        step: r.get("step")?,
        step_index: r.get::<_, i64>("step_index")? as usize,
        number: r.get("number")?,
        action: r.get("action")?,
        state: r.get("state")?,
        params: json(r.get("params")?),
        pilot_id: r.get::<_, Option<i64>>("pilot_id")?.map(|x| x as u64),
        ready_us: r.get("ready_us")?,
        dispatched_us: r.get("dispatched_us")?,
        started_us: r.get("started_us")?,
        finished_us: r.get("finished_us")?,
        recorded_us: r.get("recorded_us")?,
        outputs: json(r.get("outputs")?),
        error: r.get("error")?,
        exit_code: r.get("exit_code")?,
        counts_retry: r.get::<_, i64>("counts_retry")? != 0,
    })
}

/// Every version of every flow, newest version first within a name.
pub fn flows(c: &Connection) -> rusqlite::Result<Vec<FlowRow>> {
    let mut st = c.prepare("SELECT * FROM flows ORDER BY name, version DESC")?;
    let rows = st.query_map([], |r| flow_row(r, false))?;
    rows.collect()
}

/// One flow; the newest version unless `version` is given.
pub fn flow(c: &Connection, name: &str, version: Option<u32>) -> rusqlite::Result<Option<FlowRow>> {
    match version {
        Some(v) => c
            .query_row(
                "SELECT * FROM flows WHERE name = ?1 AND version = ?2",
                params![name, v],
                |r| flow_row(r, true),
            )
            .optional(),
        None => c
            .query_row(
                "SELECT * FROM flows WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                params![name],
                |r| flow_row(r, true),
            )
            .optional(),
    }
}

pub fn runs(c: &Connection, f: &RunFilter) -> rusqlite::Result<Vec<RunRow>> {
    let mut st = c.prepare(
        "SELECT * FROM runs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR flow = ?2)
           AND (?4 IS NULL OR id >= ?4) AND (?5 IS NULL OR id <= ?5) ORDER BY id DESC LIMIT ?3",
    )?;
    let limit = f.limit.unwrap_or(100).min(1_000_000) as i64;
    let rows = st.query_map(
        params![
            f.state,
            f.flow,
            limit,
            f.since.map(|x| x as i64),
            f.until.map(|x| x as i64)
        ],
        run_row,
    )?;
    rows.collect()
}

pub fn run(c: &Connection, id: u64) -> rusqlite::Result<Option<RunDetail>> {
    let Some(run) = c
        .query_row(
            "SELECT * FROM runs WHERE id = ?1",
            params![id as i64],
            run_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    let attempts = c
        .prepare_cached("SELECT * FROM attempts WHERE run_id = ?1 ORDER BY step_index, number")?
        .query_map(params![id as i64], attempt_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let events = c
        .prepare_cached("SELECT * FROM events WHERE run_id = ?1 ORDER BY id")?
        .query_map(params![id as i64], |r| {
            Ok(EventRow {
                ts_us: r.get("ts_us")?,
                run_id: r.get::<_, Option<i64>>("run_id")?.map(|x| x as u64),
                attempt_id: r.get::<_, Option<i64>>("attempt_id")?.map(|x| x as u64),
                pilot_id: r.get::<_, Option<i64>>("pilot_id")?.map(|x| x as u64),
                kind: r.get("kind")?,
                detail: r.get("detail")?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(RunDetail {
        run,
        attempts,
        events,
    }))
}

/// How many steps of each run are done (succeeded or skipped), counted as
/// the server's live updates count them.
pub fn steps_done(
    c: &Connection,
    runs: &[u64],
) -> rusqlite::Result<std::collections::HashMap<u64, usize>> {
    let ids = serde_json::to_string(runs).expect("ids serialise");
    let mut st = c.prepare_cached(
        "SELECT run_id, COUNT(DISTINCT step_index) FROM attempts
         WHERE state IN ('succeeded', 'skipped') AND run_id IN (SELECT value FROM json_each(?1))
         GROUP BY run_id",
    )?;
    let rows = st.query_map(params![ids], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as usize))
    })?;
    rows.collect()
}

/// Attempts handed to pilots and not yet finished, for the pilots page.
pub fn active_attempts(c: &Connection) -> rusqlite::Result<Vec<AttemptRow>> {
    let mut st = c.prepare_cached(
        "SELECT * FROM attempts WHERE state IN ('dispatched', 'running') ORDER BY id",
    )?;
    let rows = st.query_map([], attempt_row)?;
    rows.collect()
}

/// The newest `limit` runs of a flow and all their attempts: what a report
/// over the flow needs.
pub fn flow_history(
    c: &Connection,
    flow: &str,
    limit: usize,
) -> rusqlite::Result<(Vec<RunRow>, Vec<AttemptRow>)> {
    let f = RunFilter {
        flow: Some(flow.to_string()),
        limit: Some(limit),
        ..Default::default()
    };
    Ok((runs(c, &f)?, attempts_of_flow(c, flow, limit)?))
}

/// Runs per flow and state.
pub fn run_counts(c: &Connection) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let mut st = c.prepare_cached("SELECT flow, state, COUNT(*) FROM runs GROUP BY flow, state")?;
    let rows = st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    rows.collect()
}

/// Attempts of many runs at once (for reports over many runs).
pub fn attempts_of_flow(
    c: &Connection,
    flow: &str,
    limit_runs: usize,
) -> rusqlite::Result<Vec<AttemptRow>> {
    let mut st = c.prepare(
        "SELECT a.* FROM attempts a WHERE a.run_id IN (SELECT id FROM runs WHERE flow = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY a.run_id, a.step_index, a.number",
    )?;
    let rows = st.query_map(params![flow, limit_runs as i64], attempt_row)?;
    rows.collect()
}

pub fn pilots(c: &Connection) -> rusqlite::Result<Vec<PilotRow>> {
    let mut st = c.prepare("SELECT * FROM pilots ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(PilotRow {
            id: r.get::<_, i64>("id")? as u64,
            name: r.get("name")?,
            host: r.get("host")?,
            info: json(r.get("info")?).unwrap_or(Value::Null),
            state: r.get("state")?,
            reason: r.get("reason")?,
            connected_us: r.get("connected_us")?,
            last_seen_us: r.get("last_seen_us")?,
        })
    })?;
    rows.collect()
}

/// Turns free text into an FTS5 query that matches records containing every
/// word, so punctuation in user input (paths, `-`, `:`) is never FTS syntax.
fn fts_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" AND "))
}

/// Records matching every word of `text` (if any), every `field = value`
/// pair, where a field is a dotted path into the record (`flow`, `input.path`,
/// `fields.sample`, `outputs.exit_code`), and created within `created` (µs,
/// from inclusive, to exclusive) if given.
pub fn catalog_search(
    c: &Connection,
    text: Option<&str>,
    fields: &[(String, String)],
    created: Option<(i64, i64)>,
    limit: usize,
) -> rusqlite::Result<Vec<CatalogRow>> {
    let mut sql = String::from("SELECT c.* FROM catalog c WHERE 1=1");
    let mut args: Vec<String> = Vec::new();
    if let Some((from, to)) = created {
        // Integers, not user text: written into the statement.
        sql.push_str(&format!(
            " AND c.created_us >= {from} AND c.created_us < {to}"
        ));
    }
    if let Some(q) = text.and_then(fts_query) {
        args.push(q);
        sql.push_str(&format!(
            " AND c.id IN (SELECT rowid FROM catalog_text WHERE catalog_text MATCH ?{})",
            args.len()
        ));
    }
    for (k, v) in fields {
        args.push(format!("$.{k}"));
        let p = args.len();
        args.push(v.clone());
        sql.push_str(&format!(
            " AND (CAST(json_extract(c.record, ?{p}) AS TEXT) = ?{q} OR EXISTS (SELECT 1 FROM json_each(c.record, ?{p}) WHERE CAST(value AS TEXT) = ?{q}))",
            q = p + 1
        ));
    }
    sql.push_str(&format!(
        " ORDER BY c.id DESC LIMIT {}",
        limit.clamp(1, 100_000)
    ));
    let mut st = c.prepare(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        Ok(CatalogRow {
            id: r.get::<_, i64>("id")? as u64,
            run_id: r.get::<_, i64>("run_id")? as u64,
            attempt_id: r.get::<_, i64>("attempt_id")? as u64,
            flow: r.get("flow")?,
            created_us: r.get("created_us")?,
            record: json(r.get("record")?).unwrap_or(Value::Null),
        })
    })?;
    rows.collect()
}

/// What the server needs to resume after a restart.
pub struct Snapshot {
    pub flows: Vec<FlowRow>,
    pub runs: Vec<(RunRow, Vec<AttemptRow>)>,
    pub next_run: u64,
    pub next_attempt: u64,
    pub next_pilot: u64,
}

pub fn snapshot(c: &Connection) -> rusqlite::Result<Snapshot> {
    let flows = {
        let mut st = c.prepare("SELECT * FROM flows")?;
        let rows = st.query_map([], |r| flow_row(r, false))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let active: Vec<RunRow> = {
        let mut st =
            c.prepare("SELECT * FROM runs WHERE state IN ('queued', 'running') ORDER BY id")?;
        let rows = st.query_map([], run_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut runs = Vec::with_capacity(active.len());
    let mut st =
        c.prepare("SELECT * FROM attempts WHERE run_id = ?1 ORDER BY step_index, number")?;
    for r in active {
        let atts = st
            .query_map(params![r.id as i64], attempt_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        runs.push((r, atts));
    }
    // The highest id a table ever held: rows pruned away keep theirs.
    let max = |table: &str| -> rusqlite::Result<u64> {
        c.query_row(
            &format!(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM {table}), 0),
                            COALESCE((SELECT value FROM high_water WHERE name = '{table}'), 0))"
            ),
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|x| x as u64)
    };
    Ok(Snapshot {
        flows,
        runs,
        next_run: max("runs")? + 1,
        next_attempt: max("attempts")? + 1,
        next_pilot: max("pilots")? + 1,
    })
}

/// Allocation queues and their jobs as stored: JSON documents, the jobs
/// with their queue's id.
pub struct AllocSnapshot {
    pub queues: Vec<String>,
    pub jobs: Vec<(u64, String)>,
}

pub fn alloc_snapshot(c: &Connection) -> rusqlite::Result<AllocSnapshot> {
    let mut st = c.prepare("SELECT data FROM alloc_queues ORDER BY id")?;
    let queues = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = c.prepare(
        "SELECT j.queue_id, j.data FROM alloc_jobs j JOIN alloc_queues q ON q.id = j.queue_id
         ORDER BY j.queue_id, j.rowid",
    )?;
    let jobs = st
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(AllocSnapshot { queues, jobs })
}

/// The newest `limit` log lines of a queue (or of all), oldest first.
pub fn alloc_log(
    c: &Connection,
    queue: Option<u64>,
    limit: u32,
) -> rusqlite::Result<Vec<crate::alloc::LogEntry>> {
    let mut st = c.prepare(
        "SELECT queue_id, ts_us, level, message FROM alloc_log
         WHERE ?1 IS NULL OR queue_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut rows = st
        .query_map(params![queue.map(|q| q as i64), limit], |r| {
            Ok(crate::alloc::LogEntry {
                queue: r.get::<_, i64>(0)? as u64,
                at_us: r.get(1)?,
                level: r.get(2)?,
                message: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// Up to `limit` finished runs that finished before `before_us`, with ids
/// above `after`, oldest id first: the next chunk `beamflow admin prune`
/// takes.
pub fn prune_candidates(
    c: &Connection,
    before_us: i64,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<u64>> {
    let mut st = c.prepare_cached(
        "SELECT id FROM runs WHERE finished_us < ?1 AND id > ?2
           AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY id LIMIT ?3",
    )?;
    let rows = st.query_map(params![before_us, after as i64, limit as i64], |r| {
        r.get::<_, i64>(0).map(|x| x as u64)
    })?;
    rows.collect()
}

/// How many rows each table holds, for `beamflow admin prune` and the
/// store benchmark.
pub fn table_sizes(c: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    [
        "runs",
        "attempts",
        "events",
        "pilots",
        "catalog",
        "alloc_log",
    ]
    .iter()
    .map(|t| {
        c.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
            Ok((t.to_string(), r.get::<_, i64>(0)? as u64))
        })
    })
    .collect()
}
