//! Durable state in SQLite or PostgreSQL ([`db`]).
//!
//! One writer thread owns the only writing connection. The server core hands it
//! [`Batch`]es of operations, each with closures to run once the batch is
//! committed. The writer takes every batch waiting in its queue, applies them in
//! one transaction (group commit) and only then runs their closures: a pilot
//! is told its result is safe, a task is sent out, a client gets its run id —
//! never before the fact is on disk. Reads use separate connections (SQLite's
//! WAL, or PostgreSQL's snapshots, let them proceed while the writer commits).

mod db;
mod query;
mod schema;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::api::{AttemptId, AttemptState, PilotId, PilotState, RunId, RunState};
use crate::args;
use rusqlite::{Connection, OpenFlags};

use db::{blocking, Stmt};
pub use db::{Arg, Db, Dialect, Location, Row};
pub use query::*;

/// A change to the store.
#[derive(Debug)]
pub enum Op {
    PutFlow {
        name: String,
        version: u32,
        source: String,
        path: String,
        spec: String,
        at: i64,
    },
    InsertRun {
        id: RunId,
        flow: String,
        version: u32,
        input: String,
        dir: String,
        state: RunState,
        at: i64,
    },
    RunState {
        id: RunId,
        state: RunState,
        error: Option<String>,
        at: i64,
    },
    InsertAttempt(Box<NewAttempt>),
    Dispatched {
        id: AttemptId,
        pilot: PilotId,
        at: i64,
    },
    Started {
        id: AttemptId,
        at: i64,
    },
    /// The attempt ended; `recorded_us` is stamped by the writer.
    Finished {
        id: AttemptId,
        state: AttemptState,
        outputs: Option<String>,
        error: Option<String>,
        exit_code: Option<i32>,
        started: i64,
        finished: i64,
        counts_retry: bool,
    },
    /// The attempt ended without running to completion (lost, cancelled,
    /// returned): no outputs.
    AttemptState {
        id: AttemptId,
        state: AttemptState,
        error: Option<String>,
        at: i64,
    },
    /// A user retried the run: this attempt no longer counts toward the step's
    /// state or retry budget (its record stays).
    Supersede {
        id: AttemptId,
    },
    Event {
        at: i64,
        run: Option<RunId>,
        attempt: Option<AttemptId>,
        pilot: Option<PilotId>,
        kind: &'static str,
        detail: Option<String>,
    },
    PutPilot {
        id: PilotId,
        name: String,
        host: String,
        info: String,
        state: PilotState,
        at: i64,
    },
    PilotState {
        id: PilotId,
        state: PilotState,
        reason: Option<String>,
        at: i64,
    },
    Catalog {
        run: RunId,
        attempt: AttemptId,
        flow: String,
        record: String,
        body: String,
        at: i64,
    },
    /// An allocation queue's settings and counters, as JSON.
    PutAllocQueue {
        id: u64,
        state: &'static str,
        data: String,
        created: i64,
    },
    /// The queue is gone; its jobs and log stay for `alloc log`.
    DeleteAllocQueue {
        id: u64,
    },
    PutAllocJob {
        queue: u64,
        job: String,
        phase: &'static str,
        data: String,
    },
    AllocLog {
        queue: u64,
        at: i64,
        level: String,
        message: String,
    },
    /// A site run by an agent: its config and agent, as JSON.
    PutSite {
        name: String,
        data: String,
        at: i64,
    },
    /// Deletes those of `runs` that are finished and finished before
    /// `before_us`, with their attempts and events. The check is made at
    /// commit, so a run retried since it was picked stays.
    PruneRuns {
        runs: Vec<RunId>,
        before_us: i64,
    },
    /// Deletes what else grows with time and was recorded before
    /// `before_us`: events of no run, pilots that are gone, allocation log
    /// lines.
    PruneLogs {
        before_us: i64,
    },
}

#[derive(Debug)]
pub struct NewAttempt {
    pub id: AttemptId,
    pub run: RunId,
    pub step: String,
    pub step_index: usize,
    pub number: u32,
    pub action: &'static str,
    pub state: AttemptState,
    pub params: Option<String>,
    pub ready_us: i64,
    pub error: Option<String>,
    pub finished_us: Option<i64>,
}

pub type Effect = Box<dyn FnOnce() + Send>;

/// Operations committed together, and what to do once they are.
#[derive(Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub effects: Vec<Effect>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.effects.is_empty()
    }
}

/// How hard each commit pushes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// fsync the WAL on every commit: survives power loss.
    Full,
    /// Commit to the WAL without fsync: survives any process crash, and
    /// loses at most the last commits on power loss or kernel panic.
    Normal,
}

#[derive(Clone)]
pub struct Store {
    location: Location,
    tx: mpsc::Sender<Batch>,
    readers: Arc<Mutex<Vec<Db>>>,
}

/// Held by the writer's PostgreSQL session: a second server on the same
/// database would hand out the same ids.
const PG_LOCK_KEY: i64 = 0x6265_616d_666c_6f77; // "beamflow"

impl Store {
    /// Opens (creating and migrating if needed) the store and starts its
    /// writer thread.
    pub fn open(location: &Location, durability: Durability) -> anyhow::Result<Self> {
        let db = on_client_thread(location, || {
            let mut db = open_writer(location, durability)?;
            schema::migrate(&mut db)?;
            Ok(db)
        })
        .with_context(|| format!("store {location}"))?;
        let (tx, rx) = mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(db, rx))?;
        Ok(Store {
            location: location.clone(),
            tx,
            readers: Arc::default(),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Queues a batch; its effects run after it is committed.
    pub fn submit(&self, batch: Batch) {
        if self.tx.send(batch).is_err() {
            tracing::error!("store writer has stopped; exiting rather than losing state");
            std::process::exit(70);
        }
    }

    /// Runs `f` with a read connection.
    pub fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut Db) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        on_client_thread(&self.location, || {
            let popped = self.readers.lock().unwrap().pop();
            let mut db = match popped {
                Some(db) => db,
                None => open_reader(&self.location)
                    .map_err(|e| anyhow::anyhow!("store {}: {e:#}", self.location))?,
            };
            let out = f(&mut db);
            // A connection whose server went away is not reused.
            if out.is_ok() || db.dialect() == Dialect::Sqlite {
                self.readers.lock().unwrap().push(db);
            }
            out
        })
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Batch {
            ops: vec![],
            effects: vec![Box::new(move || {
                let _ = tx.send(());
            })],
        });
        let _ = rx.await;
    }

    pub fn schema_version() -> usize {
        schema::version()
    }
}

/// SQLite works from any thread; PostgreSQL's sync client must not run on
/// an async worker (see [`blocking`]).
fn on_client_thread<T: Send>(
    location: &Location,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    match location {
        Location::Sqlite(_) => f(),
        Location::Postgres(_) => blocking(f),
    }
}

fn open_writer(location: &Location, durability: Durability) -> anyhow::Result<Db> {
    match location {
        Location::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("{}: cannot create store directory: {e}", dir.display())
                })?;
            }
            let conn = Connection::open(path)
                .map_err(|e| anyhow::anyhow!("{}: cannot open store: {e}", path.display()))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(
                None,
                "synchronous",
                match durability {
                    Durability::Full => "FULL",
                    Durability::Normal => "NORMAL",
                },
            )?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(Db::sqlite(conn))
        }
        Location::Postgres(url) => {
            let mut db = Db::postgres(url)?;
            // A server restarted at once may find its predecessor's session
            // not yet ended: it gets a few seconds to go.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let mine =
                    db.query_one("SELECT pg_try_advisory_lock(?1)", args![PG_LOCK_KEY], |r| {
                        r.i64(0)
                    })?;
                if mine == 1 {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "another beamflow server is using this database (it holds advisory lock {PG_LOCK_KEY}); stop it first"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            db.batch(match durability {
                Durability::Full => "SET synchronous_commit = on",
                Durability::Normal => "SET synchronous_commit = off",
            })?;
            Ok(db)
        }
    }
}

fn open_reader(location: &Location) -> anyhow::Result<Db> {
    match location {
        Location::Sqlite(path) => {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(Db::sqlite(c))
        }
        Location::Postgres(url) => Db::postgres(url),
    }
}

/// Operations one group commit takes at most: enough to amortise a
/// commit, few enough that the first batch's effects wait no longer than
/// one such transaction, and that PostgreSQL never holds one open for long.
const MAX_GROUP_OPS: usize = 20_000;

fn writer(mut db: Db, rx: mpsc::Receiver<Batch>) {
    while let Ok(first) = rx.recv() {
        let mut ops = first.ops.len();
        let mut batches = vec![first];
        while ops < MAX_GROUP_OPS {
            let Ok(b) = rx.try_recv() else { break };
            ops += b.ops.len();
            batches.push(b);
        }
        let mut tries = 0;
        loop {
            match apply(&mut db, &batches) {
                Ok(()) => break,
                Err(e) => {
                    tries += 1;
                    tracing::error!("store commit failed (try {tries}): {e:#}");
                    if tries >= 5 {
                        tracing::error!("giving up: the store cannot be written; exiting without acknowledging anything further");
                        std::process::exit(70);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200 * tries));
                }
            }
        }
        for b in batches {
            for effect in b.effects {
                effect();
            }
        }
    }
}

fn apply(db: &mut Db, batches: &[Batch]) -> anyhow::Result<()> {
    if batches.iter().all(|b| b.ops.is_empty()) {
        return Ok(());
    }
    let recorded = crate::util::now_us();
    let mut stmts = Vec::new();
    for op in batches.iter().flat_map(|b| &b.ops) {
        statements(op, db.dialect(), recorded, &mut stmts);
    }
    db.batch("BEGIN")?;
    match db.execute_all(&stmts) {
        Ok(()) => db.batch("COMMIT"),
        Err(e) => {
            let _ = db.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// `MAX(a, b)` of two values: SQLite's two-argument MAX is PostgreSQL's
/// GREATEST.
fn greatest(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "MAX",
        Dialect::Postgres => "GREATEST",
    }
}

/// The statements that make `op` durable, appended to `out`. They run in
/// order inside the group commit's transaction.
fn statements(op: &Op, dialect: Dialect, recorded: i64, out: &mut Vec<Stmt>) {
    let mut push = |sql: &str, args: &[Arg]| out.push(Stmt::new(sql, args));
    match op {
        Op::PutFlow {
            name,
            version,
            source,
            path,
            spec,
            at,
        } => {
            push(
                "INSERT INTO flows(name, version, source, path, spec, registered_us) VALUES (?1,?2,?3,?4,?5,?6)
                 ON CONFLICT(name, version) DO UPDATE SET source = ?3, path = ?4, spec = ?5, registered_us = ?6",
                args![name, *version, source, path, spec, *at],
            );
        }
        Op::InsertRun {
            id,
            flow,
            version,
            input,
            dir,
            state,
            at,
        } => {
            push(
                "INSERT INTO runs(id, flow, flow_version, input, dir, state, created_us) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                args![*id, flow, *version, input, dir, *state, *at],
            );
        }
        Op::RunState {
            id,
            state,
            error,
            at,
        } => {
            let terminal = state.is_finished();
            push(
                "UPDATE runs SET state = ?2, error = ?3,
                   started_us = CASE WHEN ?2 = 'running' THEN COALESCE(started_us, ?4) ELSE started_us END,
                   finished_us = ?5
                 WHERE id = ?1",
                args![*id, *state, error, *at, terminal.then_some(*at)],
            );
        }
        Op::InsertAttempt(a) => {
            push(
                "INSERT INTO attempts(id, run_id, step, step_index, number, action, state, params, ready_us, error, finished_us, recorded_us)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
                args![
                    a.id,
                    a.run,
                    &a.step,
                    a.step_index,
                    a.number,
                    a.action,
                    a.state,
                    &a.params,
                    a.ready_us,
                    &a.error,
                    a.finished_us,
                    a.finished_us.map(|_| recorded)
                ],
            );
        }
        Op::Dispatched { id, pilot, at } => {
            push(
                "UPDATE attempts SET state = 'dispatched', pilot_id = ?2, dispatched_us = ?3 WHERE id = ?1",
                args![*id, *pilot, *at],
            );
        }
        Op::Started { id, at } => {
            push(
                "UPDATE attempts SET state = 'running', started_us = ?2 WHERE id = ?1 AND state IN ('dispatched', 'running')",
                args![*id, *at],
            );
        }
        Op::Finished {
            id,
            state,
            outputs,
            error,
            exit_code,
            started,
            finished,
            counts_retry,
        } => {
            push(
                "UPDATE attempts SET state = ?2, outputs = ?3, error = ?4, exit_code = ?5, started_us = ?6,
                   finished_us = ?7, recorded_us = ?8, counts_retry = ?9 WHERE id = ?1",
                args![*id, *state, outputs, error, *exit_code, *started, *finished, recorded, *counts_retry],
            );
        }
        Op::AttemptState {
            id,
            state,
            error,
            at,
        } => {
            push(
                "UPDATE attempts SET state = ?2, error = ?3, finished_us = COALESCE(finished_us, ?4), recorded_us = ?5 WHERE id = ?1",
                args![*id, *state, error, *at, recorded],
            );
        }
        Op::Supersede { id } => {
            push(
                "UPDATE attempts SET state = 'superseded', counts_retry = 0 WHERE id = ?1",
                args![*id],
            );
        }
        Op::Event {
            at,
            run,
            attempt,
            pilot,
            kind,
            detail,
        } => {
            push(
                "INSERT INTO events(ts_us, run_id, attempt_id, pilot_id, kind, detail) VALUES (?1,?2,?3,?4,?5,?6)",
                args![*at, *run, *attempt, *pilot, *kind, detail],
            );
        }
        Op::PutPilot {
            id,
            name,
            host,
            info,
            state,
            at,
        } => {
            push(
                "INSERT INTO pilots(id, name, host, info, state, connected_us, last_seen_us) VALUES (?1,?2,?3,?4,?5,?6,?6)
                 ON CONFLICT(id) DO UPDATE SET info = ?4, state = ?5, connected_us = ?6, last_seen_us = ?6, reason = NULL",
                args![*id, name, host, info, *state, *at],
            );
        }
        Op::PilotState {
            id,
            state,
            reason,
            at,
        } => {
            push(
                "UPDATE pilots SET state = ?2, reason = ?3, last_seen_us = ?4 WHERE id = ?1",
                args![*id, *state, reason, *at],
            );
        }
        Op::Catalog {
            run,
            attempt,
            flow,
            record,
            body,
            at,
        } => {
            push(
                "INSERT INTO catalog(run_id, attempt_id, flow, created_us, record) VALUES (?1,?2,?3,?4,?5)
                 ON CONFLICT(attempt_id) DO NOTHING",
                args![*run, *attempt, flow, *at, record],
            );
            // PostgreSQL's parser keeps a path or a host name as one
            // token; its text is stored as the words a search splits the
            // query into, so both databases match the same records.
            let body = match dialect {
                Dialect::Sqlite => body.clone(),
                Dialect::Postgres => query::words(body).join(" "),
            };
            // The record's words, unless it was there already.
            push(
                "INSERT INTO catalog_text(rowid, body) SELECT c.id, ?2 FROM catalog c
                 WHERE c.attempt_id = ?1 AND NOT EXISTS (SELECT 1 FROM catalog_text t WHERE t.rowid = c.id)",
                args![*attempt, body],
            );
        }
        Op::PutAllocQueue {
            id,
            state,
            data,
            created,
        } => {
            push(
                "INSERT INTO alloc_queues(id, state, data, created_us) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(id) DO UPDATE SET state = ?2, data = ?3",
                args![*id, *state, data, *created],
            );
        }
        Op::PutSite { name, data, at } => {
            push(
                "INSERT INTO sites(name, data, updated_us) VALUES (?1,?2,?3)
                 ON CONFLICT(name) DO UPDATE SET data = ?2, updated_us = ?3",
                args![name, data, *at],
            );
        }
        Op::DeleteAllocQueue { id } => {
            push("DELETE FROM alloc_queues WHERE id = ?1", args![*id]);
        }
        Op::PutAllocJob {
            queue,
            job,
            phase,
            data,
        } => {
            push(
                "INSERT INTO alloc_jobs(queue_id, job_id, phase, data) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(queue_id, job_id) DO UPDATE SET phase = ?3, data = ?4",
                args![*queue, job, *phase, data],
            );
        }
        Op::AllocLog {
            queue,
            at,
            level,
            message,
        } => {
            push(
                "INSERT INTO alloc_log(queue_id, ts_us, level, message) VALUES (?1,?2,?3,?4)",
                args![*queue, *at, level, message],
            );
        }
        Op::PruneRuns { runs, before_us } => {
            // Ids are never handed out twice: remember the highest first.
            for table in ["runs", "attempts", "pilots"] {
                push(&remember_high_water(dialect, table), &[]);
            }
            let doomed = format!(
                "SELECT id FROM runs WHERE id IN {}
                 AND state IN ('succeeded', 'failed', 'cancelled') AND finished_us < ?1",
                query::id_list(&runs.iter().map(|r| r.0).collect::<Vec<_>>())
            );
            for table in ["events", "attempts"] {
                push(
                    &format!("DELETE FROM {table} WHERE run_id IN ({doomed})"),
                    args![*before_us],
                );
            }
            push(
                &format!("DELETE FROM runs WHERE id IN ({doomed})"),
                args![*before_us],
            );
        }
        Op::PruneLogs { before_us } => {
            push(&remember_high_water(dialect, "pilots"), &[]);
            push(
                "DELETE FROM events WHERE run_id IS NULL AND ts_us < ?1",
                args![*before_us],
            );
            push(
                "DELETE FROM pilots WHERE state IN ('lost', 'left') AND last_seen_us < ?1",
                args![*before_us],
            );
            push("DELETE FROM alloc_log WHERE ts_us < ?1", args![*before_us]);
        }
    }
}

/// The statement recording the highest id `table` holds before rows of
/// it are deleted.
fn remember_high_water(dialect: Dialect, table: &str) -> String {
    let max = greatest(dialect);
    // `WHERE true` lets SQLite tell the upsert's ON from a join's.
    format!(
        "INSERT INTO high_water(name, value) SELECT '{table}', COALESCE(MAX(id), 0) FROM {table} WHERE true
         ON CONFLICT(name) DO UPDATE SET value = {max}(high_water.value, excluded.value)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u64, state: RunState, at: i64) -> Vec<Op> {
        let id = RunId(n);
        vec![
            Op::InsertRun {
                id,
                flow: "f".into(),
                version: 1,
                input: "{}".into(),
                dir: format!("/runs/{id}"),
                state: RunState::Queued,
                at,
            },
            Op::InsertAttempt(Box::new(NewAttempt {
                id: AttemptId(n),
                run: id,
                step: "s".into(),
                step_index: 0,
                number: 1,
                action: "shell",
                state: AttemptState::Ready,
                params: None,
                ready_us: at,
                error: None,
                finished_us: None,
            })),
            Op::Event {
                at,
                run: Some(id),
                attempt: Some(AttemptId(n)),
                pilot: None,
                kind: "attempt_ready",
                detail: None,
            },
            Op::RunState {
                id,
                state,
                error: None,
                at,
            },
        ]
    }

    #[test]
    fn prune_takes_only_finished_runs_before_the_cutoff_and_keeps_ids_unique() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(
            &Location::Sqlite(dir.path().join("s.db")),
            Durability::Normal,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut ops = run(1, RunState::Succeeded, 100);
        ops.extend(run(2, RunState::Running, 100));
        ops.extend(run(3, RunState::Failed, 100));
        ops.extend(run(4, RunState::Succeeded, 900));
        st.submit(Batch {
            ops,
            effects: vec![],
        });
        rt.block_on(st.flush());
        let picked = st.read(|c| prune_candidates(c, 500, 0, 10)).unwrap();
        assert_eq!(picked, [1, 3]);
        // Run 2 is passed too, as if it had finished and been retried since:
        // the store keeps what is not finished.
        st.submit(Batch {
            ops: vec![Op::PruneRuns {
                runs: [1, 2, 3, 4].map(RunId).to_vec(),
                before_us: 500,
            }],
            effects: vec![],
        });
        rt.block_on(st.flush());
        let left: Vec<u64> = st
            .read(|c| runs(c, &RunFilter::default()))
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [4, 2]);
        let sizes: std::collections::HashMap<String, u64> =
            st.read(table_sizes).unwrap().into_iter().collect();
        assert_eq!((sizes["attempts"], sizes["events"]), (2, 2));
        // With every run gone, the next ids still follow the highest ever.
        st.submit(Batch {
            ops: vec![Op::PruneRuns {
                runs: vec![RunId(4)],
                before_us: 1000,
            }],
            effects: vec![],
        });
        st.submit(Batch {
            ops: vec![Op::RunState {
                id: RunId(2),
                state: RunState::Succeeded,
                error: None,
                at: 950,
            }],
            effects: vec![],
        });
        rt.block_on(st.flush());
        st.submit(Batch {
            ops: vec![Op::PruneRuns {
                runs: vec![RunId(2)],
                before_us: 1000,
            }],
            effects: vec![],
        });
        rt.block_on(st.flush());
        let snap = st.read(snapshot).unwrap();
        assert_eq!(st.read(table_sizes).unwrap()[0], ("runs".to_string(), 0));
        assert_eq!((snap.next_run, snap.next_attempt), (5, 5));
    }
}
