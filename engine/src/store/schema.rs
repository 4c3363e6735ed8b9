//! Versioned schema. Each migration runs once, in order, inside a transaction;
//! `PRAGMA user_version` records how many have been applied. Never edit a
//! migration that has shipped: add a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE flows (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        spec TEXT NOT NULL,
        registered_us INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        flow TEXT NOT NULL,
        flow_version INTEGER NOT NULL,
        input TEXT NOT NULL,
        dir TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        created_us INTEGER NOT NULL,
        started_us INTEGER,
        finished_us INTEGER
    );
    CREATE INDEX runs_state ON runs(state);
    CREATE INDEX runs_flow ON runs(flow, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step TEXT NOT NULL,
        step_index INTEGER NOT NULL,
        number INTEGER NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        params TEXT,
        pilot_id INTEGER,
        ready_us INTEGER,
        dispatched_us INTEGER,
        started_us INTEGER,
        finished_us INTEGER,
        recorded_us INTEGER,
        outputs TEXT,
        error TEXT,
        exit_code INTEGER,
        counts_retry INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_run ON attempts(run_id, step_index, number);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts_us INTEGER NOT NULL,
        run_id INTEGER,
        attempt_id INTEGER,
        pilot_id INTEGER,
        kind TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_run ON events(run_id);
    CREATE TABLE pilots (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        info TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        connected_us INTEGER NOT NULL,
        last_seen_us INTEGER NOT NULL
    );
    CREATE TABLE catalog (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        attempt_id INTEGER NOT NULL UNIQUE,
        flow TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX catalog_flow ON catalog(flow);
    CREATE VIRTUAL TABLE catalog_text USING fts5(body);
    "#,
    // 2: allocation queues, their pilot jobs and their log.
    r#"
    CREATE TABLE alloc_queues (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        data TEXT NOT NULL,
        created_us INTEGER NOT NULL
    );
    CREATE TABLE alloc_jobs (
        queue_id INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        phase TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (queue_id, job_id)
    );
    CREATE TABLE alloc_log (
        id INTEGER PRIMARY KEY,
        queue_id INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX alloc_log_queue ON alloc_log(queue_id, id);
    "#,
    // 3: pruning. The highest ids handed out survive the rows that held
    // them, so a run pruned away never has its id (and directory) reused;
    // finished runs and old events are found by age without a scan. At a
    // million tasks the pilots page (attempts in flight) and the flows
    // page (runs per flow and state) would otherwise scan whole tables.
    r#"
    CREATE TABLE high_water (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    CREATE INDEX runs_finished ON runs(finished_us);
    CREATE INDEX events_ts ON events(ts_us);
    CREATE INDEX runs_flow_state ON runs(flow, state);
    CREATE INDEX attempts_in_flight ON attempts(state) WHERE state IN ('dispatched', 'running');
    "#,
];

/// Brings the database to the newest schema. Refuses a database written by a
/// newer beamflow rather than guessing at its layout.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the store has schema version {current}, newer than this beamflow understands ({}); upgrade beamflow",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| anyhow::anyhow!("schema migration {} failed: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn version() -> usize {
    MIGRATIONS.len()
}
