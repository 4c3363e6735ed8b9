//! `beamflow bench store`: whether the store stays quick as it grows.
//!
//! Writes `tasks` attempts (four steps per run, the runs spread over the
//! last 60 days) through the store's own writer with the operations a server issues
//! for them — run inserted, attempt ready, dispatched, started, finished,
//! its event, the run's end, a catalog record per run. Then times, at that
//! size, the reads the API, the web page, reports and a server restart
//! make, and finally prunes the older half as `beamflow admin prune` does.

use std::time::Instant;

use serde_json::{json, Value};

use crate::api::{AttemptId, AttemptState, PilotId, RunId, RunState};
use crate::store::{self, Batch, Durability, Location, NewAttempt, Op, RunFilter, Store};
use crate::util::{median, now_us};

#[derive(clap::Args)]
pub struct StoreBench {
    /// Attempts written before the reads are timed (e.g. 1000000).
    #[arg(long, default_value_t = 20000)]
    pub tasks: usize,
    /// An empty PostgreSQL database to fill, postgres://… (default: a
    /// SQLite file in a temporary directory, removed after).
    #[arg(long, value_parser = parse_location)]
    pub db: Option<Location>,
}

fn parse_location(s: &str) -> Result<Location, String> {
    Ok(Location::parse(s))
}

const STEPS: [&str; 4] = ["fetch", "reduce", "fit", "publish"];
const FLOWS: [&str; 4] = ["xpcs", "ptycho", "hedm", "braggnn"];
/// Runs still queued when the bench reads the store, as a server restart finds them.
const ACTIVE: u64 = 100;

impl StoreBench {
    pub fn run(self) -> anyhow::Result<Value> {
        store(self)
    }
}

fn store(b: StoreBench) -> anyhow::Result<Value> {
    let tmp = tempfile::Builder::new()
        .prefix("beamflow-bench-store-")
        .tempdir()?;
    let location =
        b.db.clone()
            .unwrap_or_else(|| Location::Sqlite(tmp.path().join("bench-store.db")));
    let st = Store::open(&location, Durability::Normal)?;
    let held = st.read(store::table_sizes)?;
    if held.iter().any(|(_, n)| *n > 0) {
        anyhow::bail!("store {location}: not empty; the bench starts from an empty store");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = (b.tasks / STEPS.len()).max(1) as u64;
    const DAY_US: i64 = 86_400 * 1_000_000;
    let span_us: i64 = 60 * DAY_US / runs as i64;
    let t_end = now_us();
    let t0 = Instant::now();
    let mut attempt = 0u64;
    let mut batch = Batch::default();
    for run in 1..=runs {
        let created = t_end - (runs - run) as i64 * span_us;
        let flow = FLOWS[(run % FLOWS.len() as u64) as usize];
        batch.ops.push(Op::InsertRun {
            id: RunId(run),
            flow: flow.into(),
            version: 1,
            input: json!({ "path": format!("/data/scan{run:07}.h5"), "sample": format!("S{}", run % 97) })
                .to_string(),
            dir: format!("/runs/{run}"),
            state: RunState::Queued,
            at: created,
        });
        let active = run > runs - ACTIVE.min(runs);
        if active {
            continue;
        }
        batch.ops.push(Op::RunState {
            id: RunId(run),
            state: RunState::Running,
            error: None,
            at: created,
        });
        let failed = run % 50 == 0;
        for (i, step) in STEPS.iter().enumerate() {
            attempt += 1;
            let t = created + i as i64 * 1_000_000;
            batch.ops.push(Op::InsertAttempt(Box::new(NewAttempt {
                id: AttemptId(attempt),
                run: RunId(run),
                step: step.to_string(),
                step_index: i,
                number: 1,
                action: if i == 3 { "publish" } else { "kernel" },
                state: AttemptState::Ready,
                params: Some(json!({ "path": format!("/data/scan{run:07}.h5") }).to_string()),
                ready_us: t,
                error: None,
                finished_us: None,
            })));
            batch.ops.push(Op::Dispatched {
                id: AttemptId(attempt),
                pilot: PilotId(1 + run % 8),
                at: t + 200,
            });
            batch.ops.push(Op::Started {
                id: AttemptId(attempt),
                at: t + 400,
            });
            let ok = !(failed && i == 2);
            batch.ops.push(Op::Finished {
                id: AttemptId(attempt),
                state: if ok {
                    AttemptState::Succeeded
                } else {
                    AttemptState::Failed
                },
                outputs: Some(json!({ "exit_code": 0, "beta": 0.21, "tau_s": 0.013 }).to_string()),
                error: (!ok).then(|| "fit did not converge".to_string()),
                exit_code: Some(if ok { 0 } else { 1 }),
                started: t + 400,
                finished: t + 900_000,
                counts_retry: !ok,
            });
            batch.ops.push(Op::Event {
                at: t + 900_000,
                run: Some(RunId(run)),
                attempt: Some(AttemptId(attempt)),
                pilot: Some(PilotId(1 + run % 8)),
                kind: "attempt_finished",
                detail: None,
            });
            if !ok {
                break;
            }
        }
        batch.ops.push(Op::RunState {
            id: RunId(run),
            state: if failed {
                RunState::Failed
            } else {
                RunState::Succeeded
            },
            error: failed.then(|| "step `fit` failed".to_string()),
            at: created + 4_000_000,
        });
        if !failed {
            let record = json!({
                "title": format!("scan {run}"),
                "flow": flow,
                "fields": { "sample": format!("S{}", run % 97), "beamline": "8-ID-I" },
                "outputs": { "beta": 0.21 },
            });
            batch.ops.push(Op::Catalog {
                run: RunId(run),
                attempt: AttemptId(attempt),
                flow: flow.into(),
                record: record.to_string(),
                body: format!("scan {run} S{} 8-ID-I {flow}", run % 97),
                at: created + 4_000_000,
            });
        }
        if batch.ops.len() >= 20_000 {
            st.submit(std::mem::take(&mut batch));
        }
    }
    st.submit(batch);
    rt.block_on(st.flush());
    let insert_s = t0.elapsed().as_secs_f64();
    let db_mb = match &location {
        Location::Sqlite(p) => {
            ["", "-wal"]
                .iter()
                .filter_map(|x| std::fs::metadata(format!("{}{x}", p.display())).ok())
                .map(|m| m.len())
                .sum::<u64>() as f64
                / 1e6
        }
        Location::Postgres(_) => {
            st.read(|c| {
                c.query_one("SELECT pg_database_size(current_database())", &[], |r| {
                    r.i64(0)
                })
            })? as f64
                / 1e6
        }
    };

    // Each read: the median of five, in milliseconds.
    let mut reads = serde_json::Map::new();
    let mut time = |name: &str,
                    f: &(dyn Fn(&mut store::Db) -> anyhow::Result<usize> + Sync)|
     -> anyhow::Result<()> {
        let mut ms = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = st.read(|c| f(c))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        reads.insert(name.into(), json!({ "ms": median(&mut ms), "rows": rows }));
        Ok(())
    };
    let mid = runs / 2;
    time("runs_newest_100", &|c| {
        Ok(store::runs(c, &RunFilter::default())?.len())
    })?;
    time("runs_failed_of_a_flow", &|c| {
        let f = RunFilter {
            state: Some(crate::api::RunState::Failed),
            flow: Some("hedm".into()),
            limit: Some(100),
            ..Default::default()
        };
        Ok(store::runs(c, &f)?.len())
    })?;
    time("run_detail", &|c| {
        Ok(store::run(c, mid)?.map_or(0, |d| d.attempts.len()))
    })?;
    time("run_counts", &|c| Ok(store::run_counts(c)?.len()))?;
    time("steps_done_100_runs", &|c| {
        let ids: Vec<u64> = (mid..mid + 100).collect();
        Ok(store::steps_done(c, &ids)?.len())
    })?;
    time("active_attempts", &|c| Ok(store::active_attempts(c)?.len()))?;
    time("catalog_text", &|c| {
        Ok(store::catalog_search(c, Some("S17 8-ID-I"), &[], None, 50)?.len())
    })?;
    time("catalog_field", &|c| {
        let f = [("fields.sample".to_string(), "S17".to_string())];
        Ok(store::catalog_search(c, None, &f, None, 50)?.len())
    })?;
    time("report_1000_runs", &|c| {
        Ok(store::flow_history(c, "xpcs", 1000)?.1.len())
    })?;
    time("server_restart_snapshot", &|c| {
        Ok(store::snapshot(c)?.runs.len())
    })?;

    // Prune what finished more than 30 days ago (the older half), in the
    // chunks the server uses.
    let cutoff = t_end - 30 * DAY_US;
    let t = Instant::now();
    let (mut pruned, mut after) = (0usize, 0u64);
    loop {
        let ids = st.read(|c| store::prune_candidates(c, cutoff, after, 500))?;
        let Some(&last) = ids.last() else { break };
        after = last;
        pruned += ids.len();
        st.submit(Batch {
            ops: vec![Op::PruneRuns {
                runs: ids.into_iter().map(RunId).collect(),
                before_us: cutoff,
            }],
            effects: vec![],
        });
    }
    st.submit(Batch {
        ops: vec![Op::PruneLogs { before_us: cutoff }],
        effects: vec![],
    });
    rt.block_on(st.flush());
    let prune_s = t.elapsed().as_secs_f64();
    let left = st.read(store::table_sizes)?;
    let next_run = st.read(store::snapshot)?.next_run;
    if next_run != runs + 1 {
        anyhow::bail!(
            "after pruning the next run id is {next_run}, expected {}",
            runs + 1
        );
    }
    Ok(json!({
        "tasks": attempt,
        "runs": runs,
        "insert_s": insert_s,
        "insert_tasks_per_s": attempt as f64 / insert_s,
        "db_mb": db_mb,
        "reads_ms": reads,
        "prune": {
            "runs": pruned,
            "seconds": prune_s,
            "runs_per_s": pruned as f64 / prune_s.max(1e-9),
            "rows_left": left.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
        },
    }))
}
