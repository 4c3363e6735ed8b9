//! The store on both databases. The same operations a server issues go to a
//! SQLite file and to a fresh PostgreSQL database (scripts/postgres.sh);
//! then every read the API, the web page, reports, pruning and a restart
//! make must answer the same on both, and the values asked for here.
//! (The server suites run against PostgreSQL too: BEAMFLOW_TEST_STORE.)

#[path = "support/harness.rs"]
mod harness;

use beamflow::api::{AttemptId, AttemptState, PilotId, PilotState, RunId, RunState};
use beamflow::store::{self, Batch, Durability, Location, NewAttempt, Op, RunFilter, Store};
use serde_json::{json, Value};

const FLOW: &str = r#"
name = "scan"
version = 2
[input.path]
type = "path"
[[steps]]
name = "count"
action = "shell"
params = { script = "wc -c {{ input.path }}" }
[[steps]]
name = "think"
action = "kernel"
kernel = "noop"
"#;

fn run_ops(n: u64, state: RunState, at: i64) -> Vec<Op> {
    let (id, attempt, pilot) = (RunId(n), AttemptId(n), PilotId(1));
    let failed = state == RunState::Failed;
    vec![
        Op::InsertRun {
            id,
            flow: "scan".into(),
            version: 2,
            input: json!({ "path": format!("/data/scan{id}.h5") }).to_string(),
            dir: format!("/runs/{id}"),
            state: RunState::Queued,
            at,
        },
        Op::InsertAttempt(Box::new(NewAttempt {
            id: attempt,
            run: id,
            step: "count".into(),
            step_index: 0,
            number: 1,
            action: "shell",
            state: AttemptState::Ready,
            params: Some(json!({ "run": "wc -c" }).to_string()),
            ready_us: at,
            error: None,
            finished_us: None,
        })),
        Op::Dispatched {
            id: attempt,
            pilot,
            at: at + 1,
        },
        Op::Started {
            id: attempt,
            at: at + 2,
        },
        Op::Finished {
            id: attempt,
            state: if failed {
                AttemptState::Failed
            } else {
                AttemptState::Succeeded
            },
            outputs: Some(json!({ "bytes": n * 10 }).to_string()),
            error: failed.then(|| "exit 1".to_string()),
            exit_code: Some(if failed { 1 } else { 0 }),
            started: at + 2,
            finished: at + 3,
            counts_retry: failed,
        },
        Op::Event {
            at: at + 3,
            run: Some(id),
            attempt: Some(attempt),
            pilot: Some(pilot),
            kind: "attempt_finished",
            detail: Some("it's done: 'quoted' ?1".into()),
        },
        Op::RunState {
            id,
            state: RunState::Running,
            error: None,
            at: at + 1,
        },
        Op::RunState {
            id,
            state,
            error: failed.then(|| "step count failed".to_string()),
            at: at + 4,
        },
    ]
}

/// Everything a server writes, in the order it would.
fn history() -> Vec<Batch> {
    let spec = beamflow::flow::parse(FLOW, "scan.toml", None).expect("flow parses");
    let mut ops = vec![
        Op::PutFlow {
            name: "scan".into(),
            version: 2,
            source: FLOW.into(),
            path: "/flows/scan.toml".into(),
            spec: serde_json::to_string(&spec).unwrap(),
            at: 10,
        },
        Op::PutPilot {
            id: PilotId(1),
            name: "p1".into(),
            host: "nid001".into(),
            info: json!({
                "name": "p1", "host": "nid001", "gpu_ids": [], "targets": ["cpu"],
                "resources": { "cpus": 64, "gpus": 0, "memory_mb": 0, "nodes": 1 },
                "walltime_end_us": null, "batch_job": "123.pbs", "prefetch": 16, "version": "0.1.0"
            })
            .to_string(),
            state: PilotState::Connected,
            at: 20,
        },
    ];
    ops.extend(run_ops(1, RunState::Succeeded, 100));
    ops.extend(run_ops(2, RunState::Failed, 200));
    ops.extend(run_ops(3, RunState::Succeeded, 300));
    ops.extend(run_ops(4, RunState::Running, 400));
    // Run 4's attempt is still on the pilot; a second attempt of run 2
    // superseded by a user's retry.
    ops.push(Op::InsertAttempt(Box::new(NewAttempt {
        id: AttemptId(5),
        run: RunId(2),
        step: "count".into(),
        step_index: 0,
        number: 2,
        action: "shell",
        state: AttemptState::Skipped,
        params: None,
        ready_us: 250,
        error: Some("skipped: when = false".into()),
        finished_us: Some(251),
    })));
    ops.push(Op::Supersede { id: AttemptId(5) });
    ops.push(Op::AttemptState {
        id: AttemptId(2),
        state: AttemptState::Lost,
        error: Some("pilot p1 lost".into()),
        at: 260,
    });
    for (run, sample) in [(1u64, "S17"), (3, "S18")] {
        ops.push(Op::Catalog {
            run: RunId(run),
            attempt: AttemptId(run),
            flow: "scan".into(),
            record: json!({
                "flow": "scan",
                "input": { "path": format!("/data/scan{run}.h5") },
                "fields": { "sample": sample, "tags": ["xpcs", "8-ID-I"], "q": 7 },
            })
            .to_string(),
            body: format!("scan {sample} 8-ID-I /data/scan{run}.h5"),
            at: run as i64 * 100 + 5,
        });
    }
    // The same record again (a re-published attempt) is ignored.
    ops.push(Op::Catalog {
        run: RunId(1),
        attempt: AttemptId(1),
        flow: "scan".into(),
        record: "{}".into(),
        body: "duplicate".into(),
        at: 999,
    });
    ops.push(Op::PilotState {
        id: PilotId(1),
        state: PilotState::Lost,
        reason: Some("no heartbeat for 30 s".into()),
        at: 500,
    });
    ops.push(Op::PutAllocQueue {
        id: 7,
        state: "active",
        data: json!({ "id": 7, "site": "polaris" }).to_string(),
        created: 30,
    });
    for (job, phase) in [
        ("9001.pbs", "queued"),
        ("9002.pbs", "running"),
        ("9001.pbs", "running"),
    ] {
        ops.push(Op::PutAllocJob {
            queue: 7,
            job: job.into(),
            phase,
            data: json!({ "job": job, "phase": phase }).to_string(),
        });
    }
    for (i, level) in ["info", "warn", "info"].iter().enumerate() {
        ops.push(Op::AllocLog {
            queue: 7,
            at: 40 + i as i64,
            level: level.to_string(),
            message: format!("line {i}"),
        });
    }
    // Split into several batches, as a busy server commits them.
    let mut batches = Vec::new();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        batches.push(Batch {
            ops: ops.by_ref().take(7).collect(),
            effects: vec![],
        });
    }
    batches
}

/// Every read, as JSON.
fn reads(st: &Store) -> Value {
    st.read(|c| {
        let runs = store::runs(c, &RunFilter::default())?;
        let failed = store::runs(
            c,
            &RunFilter {
                state: Some(beamflow::api::RunState::Failed),
                flow: Some("scan".into()),
                ..Default::default()
            },
        )?;
        let window = store::runs(
            c,
            &RunFilter {
                since: Some(2),
                until: Some(3),
                limit: Some(10),
                ..Default::default()
            },
        )?;
        let details: Vec<_> = (1..=5).map(|id| store::run(c, id)).collect::<Result<_, _>>()?;
        let mut done: Vec<_> = store::steps_done(c, &[1, 2, 3, 4, 99])?.into_iter().collect();
        done.sort();
        let mut counts = store::run_counts(c)?;
        counts.sort();
        let search = |c: &mut store::Db, text: Option<&str>, fields: &[(&str, &str)]| {
            let f: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            store::catalog_search(c, text, &f, None, 50)
                .map(|rows| rows.iter().map(|r| r.run_id).collect::<Vec<_>>())
        };
        let alloc = store::alloc_snapshot(c)?;
        let snap = store::snapshot(c)?;
        Ok(json!({
            "flows": store::flows(c)?,
            "flow": store::flow(c, "scan", None)?,
            "flow_v2": store::flow(c, "scan", Some(2))?.map(|f| f.version),
            "flow_v9": store::flow(c, "scan", Some(9))?.is_some(),
            "runs": runs,
            "failed": failed.iter().map(|r| r.id).collect::<Vec<_>>(),
            "window": window.iter().map(|r| r.id).collect::<Vec<_>>(),
            "details": details,
            "steps_done": done,
            "active": store::active_attempts(c)?.iter().map(|a| a.id).collect::<Vec<_>>(),
            "history": store::flow_history(c, "scan", 2)?,
            "counts": counts,
            "pilots": store::pilots(c)?,
            "search_words": search(c, Some("8-ID-I S17"), &[])?,
            "search_path": search(c, Some("/data/scan3.h5"), &[])?,
            "search_none": search(c, Some("S19"), &[])?,
            "search_field": search(c, None, &[("fields.sample", "S18")])?,
            "search_list": search(c, None, &[("fields.tags", "xpcs")])?,
            "search_number": search(c, None, &[("fields.q", "7"), ("input.path", "/data/scan1.h5")])?,
            "search_dated": store::catalog_search(c, None, &[], Some((300, 400)), 50)?
                .iter().map(|r| r.run_id).collect::<Vec<_>>(),
            "alloc_queues": alloc.queues,
            "alloc_jobs": alloc.jobs,
            "alloc_log": store::alloc_log(c, Some(7), 2)?.iter().map(|l| (l.level.clone(), l.message.clone())).collect::<Vec<_>>(),
            "alloc_log_none": store::alloc_log(c, Some(8), 2)?.len(),
            "snapshot": {
                "flows": snap.flows.len(),
                "runs": snap.runs.iter().map(|(r, a)| (r.id, a.len())).collect::<Vec<_>>(),
                "next": [snap.next_run, snap.next_attempt, snap.next_pilot],
            },
            "prune_candidates": store::prune_candidates(c, 350, 0, 10)?,
            "sizes": store::table_sizes(c)?,
        }))
    })
    .expect("reads")
}

fn prune(st: &Store, rt: &tokio::runtime::Runtime) -> Value {
    let ids = st.read(|c| store::prune_candidates(c, 250, 0, 10)).unwrap();
    st.submit(Batch {
        ops: vec![
            Op::PruneRuns {
                runs: ids.into_iter().map(RunId).collect(),
                before_us: 250,
            },
            Op::PruneLogs { before_us: 600 },
        ],
        effects: vec![],
    });
    rt.block_on(st.flush());
    json!({
        "after_prune": reads(st),
    })
}

/// `recorded_us` is the writer's clock at commit: whether it is set is
/// what both databases must agree on.
fn unclock(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "recorded_us" {
                    *x = Value::Bool(x.is_number());
                } else {
                    unclock(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(unclock),
        _ => {}
    }
}

fn exercise(location: &Location) -> Value {
    let rt = harness::rt();
    let st = Store::open(location, Durability::Full).unwrap();
    for b in history() {
        st.submit(b);
    }
    rt.block_on(st.flush());
    let mut out = reads(&st);
    out["pruned"] = prune(&st, &rt);
    // Reopened, as after a restart: the schema is not applied twice and the
    // ids continue past the pruned ones.
    drop(st);
    let st = Store::open(location, Durability::Normal).unwrap();
    out["reopened"] = st
        .read(|c| Ok(store::snapshot(c)?.next_run))
        .unwrap()
        .into();
    unclock(&mut out);
    out
}

#[test]
fn both_databases_answer_every_read_the_same_and_right() {
    let dir = tempfile::tempdir().unwrap();
    let lite = exercise(&Location::Sqlite(dir.path().join("store.db")));
    let pg = exercise(&Location::parse(&harness::fresh_postgres_db()));

    // The values themselves (on SQLite; PostgreSQL must then agree).
    assert_eq!(lite["runs"].as_array().unwrap().len(), 4);
    assert_eq!(lite["runs"][0]["id"], 4);
    assert_eq!(lite["runs"][2]["error"], "step count failed");
    assert_eq!(lite["failed"], json!([2]));
    assert_eq!(lite["window"], json!([3, 2]));
    assert_eq!(lite["flow"]["version"], 2);
    assert_eq!(lite["flow"]["source"], FLOW);
    assert_eq!(lite["flow_v9"], false);
    assert_eq!(lite["details"][4], Value::Null);
    let att = &lite["details"][0]["attempts"][0];
    assert_eq!(att["outputs"], json!({ "bytes": 10 }));
    assert_eq!(
        (att["exit_code"].clone(), att["counts_retry"].clone()),
        (json!(0), json!(false))
    );
    assert_eq!(lite["details"][0]["run"]["finished_us"], 104);
    assert_eq!(att["recorded_us"], true);
    assert_eq!(lite["details"][3]["attempts"][0]["recorded_us"], true);
    assert_eq!(lite["details"][3]["run"]["finished_us"], Value::Null);
    assert_eq!(lite["details"][3]["run"]["started_us"], 401);
    assert_eq!(lite["details"][1]["attempts"][1]["state"], "superseded");
    assert_eq!(lite["details"][1]["attempts"][0]["state"], "lost");
    assert_eq!(
        lite["details"][0]["events"][0]["detail"],
        "it's done: 'quoted' ?1"
    );
    assert_eq!(lite["steps_done"], json!([[1, 1], [3, 1], [4, 1]]));
    assert_eq!(lite["active"], json!([]));
    assert_eq!(lite["pilots"][0]["state"], "lost");
    assert_eq!(lite["pilots"][0]["info"]["batch_job"], "123.pbs");
    assert_eq!(lite["search_words"], json!([1]));
    assert_eq!(lite["search_path"], json!([3]));
    assert_eq!(lite["search_none"], json!([]));
    assert_eq!(lite["search_field"], json!([3]));
    assert_eq!(lite["search_list"], json!([3, 1]));
    assert_eq!(lite["search_number"], json!([1]));
    assert_eq!(lite["search_dated"], json!([3]));
    assert_eq!(
        lite["alloc_jobs"],
        json!([
            [7, r#"{"job":"9001.pbs","phase":"running"}"#],
            [7, r#"{"job":"9002.pbs","phase":"running"}"#]
        ])
    );
    assert_eq!(
        lite["alloc_log"],
        json!([["warn", "line 1"], ["info", "line 2"]])
    );
    assert_eq!(lite["snapshot"]["runs"], json!([[4, 1]]));
    assert_eq!(lite["snapshot"]["next"], json!([5, 6, 2]));
    assert_eq!(lite["prune_candidates"], json!([1, 2, 3]));
    let after = &lite["pruned"]["after_prune"];
    assert_eq!(
        after["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        [json!(4), json!(3)]
    );
    assert_eq!(after["alloc_log"], json!([]));
    assert_eq!(after["pilots"], json!([]), "the lost pilot was pruned");
    assert_eq!(after["snapshot"]["next"], json!([5, 6, 2]));
    assert_eq!(lite["reopened"], 5);

    // And PostgreSQL answers exactly the same.
    for (key, want) in lite.as_object().unwrap() {
        assert_eq!(&pg[key], want, "PostgreSQL differs from SQLite in `{key}`");
    }
}

#[test]
fn a_second_server_on_one_postgres_database_is_refused() {
    let url = harness::fresh_postgres_db();
    let loc = Location::parse(&url);
    let first = Store::open(&loc, Durability::Normal).unwrap();
    let second = Store::open(&loc, Durability::Normal)
        .err()
        .expect("refused");
    assert!(
        format!("{second:#}").contains("another beamflow server is using this database"),
        "{second:#}"
    );
    // The error names the database, never its password.
    drop(first);
    let bad = Location::parse("postgres://bf:hunter2@127.0.0.1:1/none");
    let e = format!("{:#}", Store::open(&bad, Durability::Normal).err().unwrap());
    assert!(e.contains("postgres://bf:***@127.0.0.1:1/none"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}
