//! `beamflow bench engine`: the engine's own cost, measured through a real
//! server and pilot on loopback.
//!
//! Two phases, because they answer different questions:
//! - throughput: a burst of N one-step runs (`noop` kernel, then `shell true`)
//!   submitted at once; tasks/s from the first submission to the last commit.
//! - latency: runs of a 4-step `noop` chain, one after another on an idle
//!   engine; per-step dispatch latency and overhead (ready → recorded, minus
//!   the action's own time), which a burst would drown in queue wait.

use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::local::{Local, LocalOptions};
use crate::site::SiteConfig;
use crate::store::Durability;

pub struct EngineBench {
    pub noop_tasks: usize,
    pub shell_tasks: usize,
    pub latency_runs: usize,
    pub pilots: usize,
    pub prefetch: Option<u32>,
    pub durability: Durability,
}

const NOOP: &str = "name = \"bench-noop\"\nversion = 1\n[[steps]]\nname = \"noop\"\naction = \"kernel\"\nkernel = \"noop\"\n";
const SHELL: &str = "name = \"bench-shell\"\nversion = 1\n[[steps]]\nname = \"true\"\naction = \"shell\"\nparams = { argv = [\"true\"] }\n";
const CHAIN: &str = "name = \"bench-chain\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"kernel\"\nkernel = \"noop\"\n[[steps]]\nname = \"b\"\naction = \"kernel\"\nkernel = \"noop\"\n[[steps]]\nname = \"c\"\naction = \"kernel\"\nkernel = \"noop\"\n[[steps]]\nname = \"d\"\naction = \"kernel\"\nkernel = \"noop\"\n";

#[derive(Serialize)]
struct Quantiles {
    p50_ms: f64,
    p99_ms: f64,
}

fn quantiles(mut v: Vec<f64>) -> Quantiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    Quantiles {
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    }
}

struct Row {
    ready: i64,
    dispatched: i64,
    started: i64,
    finished: i64,
    recorded: i64,
}

fn rows(local: &Local, flow: &str) -> anyhow::Result<Vec<Row>> {
    let flow = flow.to_string();
    local.store().read(move |c| {
        c.query(
            "SELECT a.ready_us, a.dispatched_us, a.started_us, a.finished_us, a.recorded_us FROM attempts a
             JOIN runs r ON r.id = a.run_id WHERE r.flow = ?1 AND a.state = 'succeeded'",
            crate::args![flow],
            |r| {
                Ok(Row {
                    ready: r.i64(0)?,
                    dispatched: r.i64(1)?,
                    started: r.i64(2)?,
                    finished: r.i64(3)?,
                    recorded: r.i64(4)?,
                })
            },
        )
    })
}

/// Submits `n` runs of `flow` in large batches and waits for all of them.
async fn burst(local: &Local, flow: &str, n: usize) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(5000);
        ids.extend(local.client.submit(flow, None, vec![json!({}); k]).await?);
        left -= k;
    }
    let runs = local.client.wait(&ids, false, None).await?;
    let wall = t0.elapsed().as_secs_f64();
    let failed = runs.iter().filter(|r| r.state != "succeeded").count();
    anyhow::ensure!(failed == 0, "{failed} of {n} {flow} runs did not succeed");
    let rows = rows(local, flow)?;
    let first = rows.iter().map(|r| r.ready).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.recorded).max().unwrap_or(0);
    let span = (last - first) as f64 / 1e6;
    Ok(json!({
        "tasks": n,
        "tasks_per_s": n as f64 / span,
        "client_wall_s": wall,
        "engine_span_s": span,
        "dispatch_latency": quantiles(rows.iter().map(|r| (r.dispatched - r.ready) as f64 / 1e3).collect()),
        "ready_to_recorded": quantiles(rows.iter().map(|r| (r.recorded - r.ready) as f64 / 1e3).collect()),
    }))
}

pub async fn engine(b: EngineBench) -> anyhow::Result<Value> {
    let local = Local::start(LocalOptions {
        home: None,
        pilots: b.pilots,
        cpus: None,
        prefetch: b.prefetch,
        durability: b.durability,
        site: SiteConfig::local(),
    })
    .await?;
    for src in [NOOP, SHELL, CHAIN] {
        local.client.register_source(src, "<bench>").await?;
    }
    // Let the pilots register before the clock starts.
    for _ in 0..100 {
        let p: Vec<Value> = local.client.get("/api/pilots").await?;
        if p.iter().filter(|x| x["state"] == "connected").count() >= b.pilots {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let noop = burst(&local, "bench-noop", b.noop_tasks).await?;
    let shell = burst(&local, "bench-shell", b.shell_tasks).await?;

    for _ in 0..b.latency_runs {
        let ids = local
            .client
            .submit("bench-chain", None, vec![json!({})])
            .await?;
        local.client.wait(&ids, false, None).await?;
    }
    let chain = rows(&local, "bench-chain")?;
    let overhead = quantiles(
        chain
            .iter()
            .map(|r| ((r.recorded - r.ready) - (r.finished - r.started)) as f64 / 1e3)
            .collect(),
    );
    let dispatch = quantiles(
        chain
            .iter()
            .map(|r| (r.dispatched - r.ready) as f64 / 1e3)
            .collect(),
    );
    let start_lat = quantiles(
        chain
            .iter()
            .map(|r| (r.started - r.ready) as f64 / 1e3)
            .collect(),
    );
    local.stop().await?;

    Ok(json!({
        "bench": "engine",
        "config": {
            "noop_tasks": b.noop_tasks,
            "shell_tasks": b.shell_tasks,
            "latency_runs": b.latency_runs,
            "latency_steps_per_run": 4,
            "pilots": b.pilots,
            "prefetch": b.prefetch,
            "durability": format!("{:?}", b.durability).to_lowercase(),
            "transport": "loopback websocket, server and pilots in one process",
        },
        "machine": crate::host::machine(),
        "noop_tasks_per_s": noop["tasks_per_s"],
        "shell_true_tasks_per_s": shell["tasks_per_s"],
        "overhead_p50_ms": overhead.p50_ms,
        "overhead_p99_ms": overhead.p99_ms,
        "dispatch_latency_p50_ms": dispatch.p50_ms,
        "dispatch_latency_p99_ms": dispatch.p99_ms,
        "ready_to_started_p50_ms": start_lat.p50_ms,
        "ready_to_started_p99_ms": start_lat.p99_ms,
        "noop_burst": noop,
        "shell_burst": shell,
    }))
}
