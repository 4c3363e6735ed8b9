//! Reads: the rows the API and the CLI show, and what the server reloads on start.

use super::db::{Db, Dialect, Row};
use crate::args;
use serde_json::Value;

pub use crate::api::{
    AttemptRow, CatalogRow, EventRow, FlowRow, PilotRow, RunDetail, RunFilter, RunRow,
};

/// A row's `state` column as the state enum of its table.
fn state<S: std::str::FromStr<Err = String>>(r: &Row) -> anyhow::Result<S> {
    r.text("state")?
        .parse()
        .map_err(|e| anyhow::anyhow!("stored state: {e}"))
}

fn json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn flow_row(r: &Row, with_source: bool) -> anyhow::Result<FlowRow> {
    let spec = r.text("spec")?;
    let name = r.text("name")?;
    Ok(FlowRow {
        version: u32::try_from(r.i64("version")?)?,
        path: r.text("path")?,
        registered_us: r.i64("registered_us")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| anyhow::anyhow!("flow {name}: stored spec does not parse: {e}"))?,
        source: if with_source {
            Some(r.text("source")?)
        } else {
            None
        },
        name,
    })
}

fn run_row(r: &Row) -> anyhow::Result<RunRow> {
    Ok(RunRow {
        id: r.u64("id")?,
        flow: r.text("flow")?,
        flow_version: u32::try_from(r.i64("flow_version")?)?,
        input: json(r.opt_text("input")?).unwrap_or(Value::Null),
        dir: r.text("dir")?,
        state: state(r)?,
        error: r.opt_text("error")?,
        created_us: r.i64("created_us")?,
        started_us: r.opt_i64("started_us")?,
        finished_us: r.opt_i64("finished_us")?,
    })
}

fn attempt_row(r: &Row) -> anyhow::Result<AttemptRow> {
    Ok(AttemptRow {
        id: r.u64("id")?,
        run_id: r.u64("run_id")?,
        step: r.text("step")?,
        step_index: r.u64("step_index")? as usize,
        number: u32::try_from(r.i64("number")?)?,
        action: r.text("action")?,
        state: state(r)?,
        params: json(r.opt_text("params")?),
        pilot_id: r.opt_u64("pilot_id")?,
        ready_us: r.opt_i64("ready_us")?,
        dispatched_us: r.opt_i64("dispatched_us")?,
        started_us: r.opt_i64("started_us")?,
        finished_us: r.opt_i64("finished_us")?,
        recorded_us: r.opt_i64("recorded_us")?,
        outputs: json(r.opt_text("outputs")?),
        error: r.opt_text("error")?,
        exit_code: r.opt_i64("exit_code")?.map(|x| x as i32),
        counts_retry: r.i64("counts_retry")? != 0,
    })
}

/// Every version of every flow, newest version first within a name.
pub fn flows(c: &mut Db) -> anyhow::Result<Vec<FlowRow>> {
    c.query(
        "SELECT * FROM flows ORDER BY name, version DESC",
        &[],
        |r| flow_row(r, false),
    )
}

/// Each flow version's source text, as registered.
pub fn flow_sources(c: &mut Db) -> anyhow::Result<Vec<((String, u32), String)>> {
    c.query("SELECT name, version, source FROM flows", &[], |r| {
        Ok(((r.text(0)?, u32::try_from(r.i64(1)?)?), r.text(2)?))
    })
}

/// One flow; the newest version unless `version` is given.
pub fn flow(c: &mut Db, name: &str, version: Option<u32>) -> anyhow::Result<Option<FlowRow>> {
    match version {
        Some(v) => c.query_opt(
            "SELECT * FROM flows WHERE name = ?1 AND version = ?2",
            args![name, v],
            |r| flow_row(r, true),
        ),
        None => c.query_opt(
            "SELECT * FROM flows WHERE name = ?1 ORDER BY version DESC LIMIT 1",
            args![name],
            |r| flow_row(r, true),
        ),
    }
}

pub fn runs(c: &mut Db, f: &RunFilter) -> anyhow::Result<Vec<RunRow>> {
    let limit = f.limit.unwrap_or(100).min(1_000_000);
    // The casts type the parameters for PostgreSQL, which cannot tell
    // from `?1 IS NULL` alone.
    c.query(
        "SELECT * FROM runs WHERE (CAST(?1 AS TEXT) IS NULL OR state = ?1) AND (CAST(?2 AS TEXT) IS NULL OR flow = ?2)
           AND (CAST(?4 AS BIGINT) IS NULL OR id >= ?4) AND (CAST(?5 AS BIGINT) IS NULL OR id <= ?5) ORDER BY id DESC LIMIT ?3",
        args![f.state.map(|s| s.as_str()), &f.flow, limit, f.since, f.until],
        run_row,
    )
}

pub fn run(c: &mut Db, id: u64) -> anyhow::Result<Option<RunDetail>> {
    let Some(run) = c.query_opt("SELECT * FROM runs WHERE id = ?1", args![id], run_row)? else {
        return Ok(None);
    };
    let attempts = c.query(
        "SELECT * FROM attempts WHERE run_id = ?1 ORDER BY step_index, number",
        args![id],
        attempt_row,
    )?;
    let events = c.query(
        "SELECT * FROM events WHERE run_id = ?1 ORDER BY id",
        args![id],
        |r| {
            Ok(EventRow {
                ts_us: r.i64("ts_us")?,
                run_id: r.opt_u64("run_id")?,
                attempt_id: r.opt_u64("attempt_id")?,
                pilot_id: r.opt_u64("pilot_id")?,
                kind: r.text("kind")?,
                detail: r.opt_text("detail")?,
            })
        },
    )?;
    Ok(Some(RunDetail {
        run,
        attempts,
        events,
    }))
}

/// `IN (…)` of ids: integers of ours, written into the statement.
pub(super) fn id_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "(NULL)".into();
    }
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("({})", list.join(","))
}

/// How many steps of each run are done (succeeded or skipped), counted as
/// the server's live updates count them.
pub fn steps_done(
    c: &mut Db,
    runs: &[u64],
) -> anyhow::Result<std::collections::HashMap<u64, usize>> {
    let rows = c.query(
        &format!(
            "SELECT run_id, COUNT(DISTINCT step_index) FROM attempts
             WHERE state IN ('succeeded', 'skipped') AND run_id IN {}
             GROUP BY run_id",
            id_list(runs)
        ),
        &[],
        |r| Ok((r.u64(0)?, r.u64(1)? as usize)),
    )?;
    Ok(rows.into_iter().collect())
}

/// Attempts handed to pilots and not yet finished, for the pilots page.
pub fn active_attempts(c: &mut Db) -> anyhow::Result<Vec<AttemptRow>> {
    c.query(
        "SELECT * FROM attempts WHERE state IN ('dispatched', 'running') ORDER BY id",
        &[],
        attempt_row,
    )
}

/// The newest `limit` runs of a flow and all their attempts: what a report
/// over the flow needs.
pub fn flow_history(
    c: &mut Db,
    flow: &str,
    limit: usize,
) -> anyhow::Result<(Vec<RunRow>, Vec<AttemptRow>)> {
    let f = RunFilter {
        flow: Some(flow.to_string()),
        limit: Some(limit),
        ..Default::default()
    };
    Ok((runs(c, &f)?, attempts_of_flow(c, flow, limit)?))
}

/// Runs per flow and state.
pub fn run_counts(c: &mut Db) -> anyhow::Result<Vec<(String, String, u64)>> {
    c.query(
        "SELECT flow, state, COUNT(*) FROM runs GROUP BY flow, state",
        &[],
        |r| Ok((r.text(0)?, r.text(1)?, r.u64(2)?)),
    )
}

/// Attempts of many runs at once (for reports over many runs).
pub fn attempts_of_flow(
    c: &mut Db,
    flow: &str,
    limit_runs: usize,
) -> anyhow::Result<Vec<AttemptRow>> {
    c.query(
        "SELECT a.* FROM attempts a WHERE a.run_id IN (SELECT id FROM runs WHERE flow = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY a.run_id, a.step_index, a.number",
        args![flow, limit_runs],
        attempt_row,
    )
}

pub fn pilots(c: &mut Db) -> anyhow::Result<Vec<PilotRow>> {
    c.query("SELECT * FROM pilots ORDER BY id", &[], |r| {
        Ok(PilotRow {
            id: r.u64("id")?,
            name: r.text("name")?,
            host: r.text("host")?,
            info: serde_json::from_str(&r.text("info")?).map_err(|e| {
                anyhow::anyhow!(
                    "pilot {}: its stored info does not parse: {e}",
                    r.i64("id").unwrap_or(0)
                )
            })?,
            state: state(r)?,
            reason: r.opt_text("reason")?,
            connected_us: r.i64("connected_us")?,
            last_seen_us: r.i64("last_seen_us")?,
        })
    })
}

/// The words of free text, so punctuation in user input (paths, `-`, `:`)
/// is never full-text query syntax.
pub(super) fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect()
}

/// Records matching every word of `text` (if any), every `field = value`
/// pair, where a field is a dotted path into the record (`flow`, `input.path`,
/// `fields.sample`, `outputs.exit_code`), and created within `created` (µs,
/// from inclusive, to exclusive) if given.
pub fn catalog_search(
    c: &mut Db,
    text: Option<&str>,
    fields: &[(String, String)],
    created: Option<(i64, i64)>,
    limit: usize,
) -> anyhow::Result<Vec<CatalogRow>> {
    let pg = c.dialect() == Dialect::Postgres;
    let mut sql = String::from("SELECT c.* FROM catalog c WHERE 1=1");
    let mut args: Vec<String> = Vec::new();
    if let Some((from, to)) = created {
        // Integers, not user text: written into the statement.
        sql.push_str(&format!(
            " AND c.created_us >= {from} AND c.created_us < {to}"
        ));
    }
    let words = text.map(words).unwrap_or_default();
    if !words.is_empty() {
        if pg {
            // Every word, each as a phrase of the tokens it parses into.
            let mut terms = Vec::new();
            for w in words {
                args.push(w.to_string());
                terms.push(format!("phraseto_tsquery('simple', ?{})", args.len()));
            }
            sql.push_str(&format!(
                " AND c.id IN (SELECT rowid FROM catalog_text WHERE words @@ ({}))",
                terms.join(" && ")
            ));
        } else {
            let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
            args.push(quoted.join(" AND "));
            sql.push_str(&format!(
                " AND c.id IN (SELECT rowid FROM catalog_text WHERE catalog_text MATCH ?{})",
                args.len()
            ));
        }
    }
    for (k, v) in fields {
        if pg {
            args.push(k.clone());
            let p = args.len();
            args.push(v.clone());
            let at = format!("(c.record::jsonb #> string_to_array(?{p}, '.'))");
            sql.push_str(&format!(
                " AND ((c.record::jsonb #>> string_to_array(?{p}, '.')) = ?{q}
                   OR (jsonb_typeof({at}) = 'array' AND EXISTS (SELECT 1 FROM jsonb_array_elements_text({at}) v WHERE v = ?{q})))",
                q = p + 1
            ));
        } else {
            args.push(format!("$.{k}"));
            let p = args.len();
            args.push(v.clone());
            sql.push_str(&format!(
                " AND (CAST(json_extract(c.record, ?{p}) AS TEXT) = ?{q} OR EXISTS (SELECT 1 FROM json_each(c.record, ?{p}) WHERE CAST(value AS TEXT) = ?{q}))",
                q = p + 1
            ));
        }
    }
    sql.push_str(&format!(
        " ORDER BY c.id DESC LIMIT {}",
        limit.clamp(1, 100_000)
    ));
    let args: Vec<super::Arg> = args.into_iter().map(Into::into).collect();
    c.query(&sql, &args, |r| {
        Ok(CatalogRow {
            id: r.u64("id")?,
            run_id: r.u64("run_id")?,
            attempt_id: r.u64("attempt_id")?,
            flow: r.text("flow")?,
            created_us: r.i64("created_us")?,
            record: json(r.opt_text("record")?).unwrap_or(Value::Null),
        })
    })
}

/// What the server needs to resume after a restart.
pub struct Snapshot {
    pub flows: Vec<FlowRow>,
    pub runs: Vec<(RunRow, Vec<AttemptRow>)>,
    pub next_run: u64,
    pub next_attempt: u64,
    pub next_pilot: u64,
}

pub fn snapshot(c: &mut Db) -> anyhow::Result<Snapshot> {
    let flows = c.query("SELECT * FROM flows", &[], |r| flow_row(r, false))?;
    let active = c.query(
        "SELECT * FROM runs WHERE state IN ('queued', 'running') ORDER BY id",
        &[],
        run_row,
    )?;
    let mut runs = Vec::with_capacity(active.len());
    for r in active {
        let atts = c.query(
            "SELECT * FROM attempts WHERE run_id = ?1 ORDER BY step_index, number",
            args![r.id],
            attempt_row,
        )?;
        runs.push((r, atts));
    }
    // The highest id a table ever held: rows pruned away keep theirs.
    let mut max = |table: &str| -> anyhow::Result<u64> {
        let held = c.query_one(
            &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
            &[],
            |r| r.u64(0),
        )?;
        let pruned = c.query_opt(
            "SELECT value FROM high_water WHERE name = ?1",
            args![table],
            |r| r.u64(0),
        )?;
        Ok(held.max(pruned.unwrap_or(0)))
    };
    Ok(Snapshot {
        next_run: max("runs")? + 1,
        next_attempt: max("attempts")? + 1,
        next_pilot: max("pilots")? + 1,
        flows,
        runs,
    })
}

/// Allocation queues and their jobs as stored: JSON documents, the jobs
/// with their queue's id.
pub struct AllocSnapshot {
    pub queues: Vec<String>,
    pub jobs: Vec<(u64, String)>,
}

pub fn alloc_snapshot(c: &mut Db) -> anyhow::Result<AllocSnapshot> {
    let queues = c.query("SELECT data FROM alloc_queues ORDER BY id", &[], |r| {
        r.text(0)
    })?;
    let jobs = c.query(
        "SELECT j.queue_id, j.data FROM alloc_jobs j JOIN alloc_queues q ON q.id = j.queue_id
         ORDER BY j.queue_id, j.rowid",
        &[],
        |r| Ok((r.u64(0)?, r.text(1)?)),
    )?;
    Ok(AllocSnapshot { queues, jobs })
}

/// Sites run by agents, as stored: (name, JSON).
pub fn sites(c: &mut Db) -> anyhow::Result<Vec<(String, String)>> {
    c.query("SELECT name, data FROM sites ORDER BY name", &[], |r| {
        Ok((r.text(0)?, r.text(1)?))
    })
}

/// The newest `limit` log lines of a queue (or of all), oldest first.
pub fn alloc_log(
    c: &mut Db,
    queue: Option<u64>,
    limit: u32,
) -> anyhow::Result<Vec<crate::alloc::LogEntry>> {
    let mut rows = c.query(
        "SELECT queue_id, ts_us, level, message FROM alloc_log
         WHERE CAST(?1 AS BIGINT) IS NULL OR queue_id = ?1 ORDER BY id DESC LIMIT ?2",
        args![queue, limit],
        |r| {
            Ok(crate::alloc::LogEntry {
                queue: r.u64(0)?,
                at_us: r.i64(1)?,
                level: r.text(2)?,
                message: r.text(3)?,
            })
        },
    )?;
    rows.reverse();
    Ok(rows)
}

/// Up to `limit` finished runs that finished before `before_us`, with ids
/// above `after`, oldest id first: the next chunk `beamflow admin prune`
/// takes.
pub fn prune_candidates(
    c: &mut Db,
    before_us: i64,
    after: u64,
    limit: usize,
) -> anyhow::Result<Vec<u64>> {
    c.query(
        "SELECT id FROM runs WHERE finished_us < ?1 AND id > ?2
           AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY id LIMIT ?3",
        args![before_us, after, limit],
        |r| r.u64(0),
    )
}

/// How many rows each table holds, for `beamflow admin prune` and the
/// store benchmark.
pub fn table_sizes(c: &mut Db) -> anyhow::Result<Vec<(String, u64)>> {
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
        c.query_one(&format!("SELECT COUNT(*) FROM {t}"), &[], |r| {
            Ok((t.to_string(), r.u64(0)?))
        })
    })
    .collect()
}
