//! Versioned schema, one list of migrations per database. Each migration
//! runs once, in order, inside a transaction; SQLite's `PRAGMA
//! user_version`, or PostgreSQL's `beamflow_schema` table, records how many
//! have been applied. Never edit a migration that has shipped: add a new
//! one to both lists (they keep the same numbering and meaning).

use super::db::{Db, Dialect};

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
    // 4: sites run by agents elsewhere, and their configs.
    r#"
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_us INTEGER NOT NULL
    );
    "#,
];

/// The same tables in PostgreSQL: integers are BIGINT (ids, microsecond
/// times), rows numbered by SQLite's rowid get a `rowid` column of their
/// own, and the catalog's words are a generated `tsvector` under a GIN
/// index instead of an FTS5 table.
const PG_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE flows (
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        spec TEXT NOT NULL,
        registered_us BIGINT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE runs (
        id BIGINT PRIMARY KEY,
        flow TEXT NOT NULL,
        flow_version BIGINT NOT NULL,
        input TEXT NOT NULL,
        dir TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        created_us BIGINT NOT NULL,
        started_us BIGINT,
        finished_us BIGINT
    );
    CREATE INDEX runs_state ON runs(state);
    CREATE INDEX runs_flow ON runs(flow, id);
    CREATE TABLE attempts (
        id BIGINT PRIMARY KEY,
        run_id BIGINT NOT NULL REFERENCES runs(id),
        step TEXT NOT NULL,
        step_index BIGINT NOT NULL,
        number BIGINT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        params TEXT,
        pilot_id BIGINT,
        ready_us BIGINT,
        dispatched_us BIGINT,
        started_us BIGINT,
        finished_us BIGINT,
        recorded_us BIGINT,
        outputs TEXT,
        error TEXT,
        exit_code BIGINT,
        counts_retry BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_run ON attempts(run_id, step_index, number);
    CREATE TABLE events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts_us BIGINT NOT NULL,
        run_id BIGINT,
        attempt_id BIGINT,
        pilot_id BIGINT,
        kind TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_run ON events(run_id);
    CREATE TABLE pilots (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        info TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        connected_us BIGINT NOT NULL,
        last_seen_us BIGINT NOT NULL
    );
    CREATE TABLE catalog (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        run_id BIGINT NOT NULL,
        attempt_id BIGINT NOT NULL UNIQUE,
        flow TEXT NOT NULL,
        created_us BIGINT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX catalog_flow ON catalog(flow);
    CREATE TABLE catalog_text (
        rowid BIGINT PRIMARY KEY,
        body TEXT NOT NULL,
        words tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
    );
    CREATE INDEX catalog_words ON catalog_text USING GIN (words);
    "#,
    // 2: allocation queues, their pilot jobs and their log.
    r#"
    CREATE TABLE alloc_queues (
        id BIGINT PRIMARY KEY,
        state TEXT NOT NULL,
        data TEXT NOT NULL,
        created_us BIGINT NOT NULL
    );
    CREATE TABLE alloc_jobs (
        queue_id BIGINT NOT NULL,
        job_id TEXT NOT NULL,
        phase TEXT NOT NULL,
        data TEXT NOT NULL,
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,
        PRIMARY KEY (queue_id, job_id)
    );
    CREATE TABLE alloc_log (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        queue_id BIGINT NOT NULL,
        ts_us BIGINT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX alloc_log_queue ON alloc_log(queue_id, id);
    "#,
    // 3: pruning (see the SQLite list).
    r#"
    CREATE TABLE high_water (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    CREATE INDEX runs_finished ON runs(finished_us);
    CREATE INDEX events_ts ON events(ts_us);
    CREATE INDEX runs_flow_state ON runs(flow, state);
    CREATE INDEX attempts_in_flight ON attempts(state) WHERE state IN ('dispatched', 'running');
    "#,
    // 4: sites run by agents elsewhere, and their configs.
    r#"
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_us BIGINT NOT NULL
    );
    "#,
];

fn migrations(d: Dialect) -> &'static [&'static str] {
    match d {
        Dialect::Sqlite => MIGRATIONS,
        Dialect::Postgres => PG_MIGRATIONS,
    }
}

/// Brings the database to the newest schema. Refuses a database written by a
/// newer beamflow rather than guessing at its layout.
pub fn migrate(db: &mut Db) -> anyhow::Result<()> {
    let list = migrations(db.dialect());
    if db.dialect() == Dialect::Postgres {
        db.batch("CREATE TABLE IF NOT EXISTS beamflow_schema (version BIGINT NOT NULL)")?;
    }
    // Two servers starting on one PostgreSQL database migrate one at a
    // time (the table lock is held to the commit).
    db.batch(match db.dialect() {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN; LOCK TABLE beamflow_schema IN EXCLUSIVE MODE",
    })?;
    let result = (|| {
        let current = current_version(db)?;
        if current > list.len() {
            anyhow::bail!(
                "the store has schema version {current}, newer than this beamflow understands ({}); upgrade beamflow",
                list.len()
            );
        }
        for (i, sql) in list.iter().enumerate().skip(current) {
            db.batch(sql)
                .map_err(|e| anyhow::anyhow!("schema migration {} failed: {e:#}", i + 1))?;
            set_version(db, i + 1)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => db.batch("COMMIT"),
        Err(e) => {
            let _ = db.batch("ROLLBACK");
            Err(e)
        }
    }
}

fn current_version(db: &mut Db) -> anyhow::Result<usize> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "PRAGMA user_version",
        Dialect::Postgres => "SELECT COALESCE(MAX(version), 0) FROM beamflow_schema",
    };
    Ok(db.query_one(sql, &[], |r| r.u64(0))? as usize)
}

fn set_version(db: &mut Db, v: usize) -> anyhow::Result<()> {
    match db.dialect() {
        // A pragma takes no parameters; `v` is ours.
        Dialect::Sqlite => db.batch(&format!("PRAGMA user_version = {v}")),
        Dialect::Postgres => {
            db.batch("DELETE FROM beamflow_schema")?;
            db.execute(
                "INSERT INTO beamflow_schema(version) VALUES (?1)",
                crate::args![v],
            )?;
            Ok(())
        }
    }
}

pub fn version() -> usize {
    MIGRATIONS.len()
}
