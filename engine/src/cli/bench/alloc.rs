//! `beamflow bench alloc`: how long a task waits for a pilot the allocation
//! manager submits through the site's batch scheduler.
//!
//! - cold: no pilot exists; one run is submitted and the manager must sbatch
//!   (qsub) a pilot job, the scheduler start it and the pilot connect. Each
//!   sample waits until the previous pilot has left.
//! - warm: a pilot is up and idle; runs go one after another.
//!
//! The figure is ready → started of the run's only step, as the store records
//! it; cold samples also split it into submission, scheduler wait and
//! pilot start-up.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::alloc::{QueueInfo, QueueSpec};
use crate::cli::local::{Local, LocalOptions};
use crate::site::SiteConfig;
use crate::store::{Durability, RunDetail};

#[derive(clap::Args)]
pub struct AllocBench {
    /// The site (name or file) whose scheduler is measured.
    #[arg(long, default_value = "local-slurm")]
    pub site: String,
    /// The site's target.
    #[arg(long, default_value = "cpu")]
    pub target: String,
    /// Cold samples (each waits for the previous pilot to leave).
    #[arg(long, default_value_t = 3)]
    pub cold: usize,
    /// Runs on the warm pilot.
    #[arg(long, default_value_t = 20)]
    pub warm: usize,
}

const FLOW: &str = "name = \"bench-alloc\"\nversion = 1\n[[steps]]\nname = \"true\"\naction = \"shell\"\non = \"TARGET\"\nparams = { argv = [\"true\"] }\n";

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl AllocBench {
    pub async fn run(self) -> anyhow::Result<Value> {
        alloc(self).await
    }
}

async fn alloc(b: AllocBench) -> anyhow::Result<Value> {
    let path = crate::site::find(&b.site)?;
    let site = SiteConfig::load(&path)?;
    let target = site.effective(&b.target)?;
    let local = Local::start(LocalOptions {
        home: None,
        pilots: 0,
        cpus: None,
        prefetch: None,
        durability: Durability::Normal,
        site: site.clone(),
    })
    .await?;
    let flow = FLOW.replace("TARGET", &b.target);
    let f = local.home.join("bench-alloc.toml");
    std::fs::write(&f, flow)?;
    local.client.register(&f).await?;
    let spec = QueueSpec {
        target,
        max_jobs: 1,
        max_nodes: None,
        backlog: 1,
        nodes_per_job: 1,
        walltime_s: 600,
        // Long enough for the warm runs, short enough between cold samples.
        idle_timeout_s: 3,
        reservation: None,
    };
    let r: Value = local
        .client
        .post("/api/alloc", &serde_json::to_value(&spec)?)
        .await?;
    anyhow::ensure!(r["id"].as_u64().is_some(), "cannot add the queue: {r}");
    let mut cold = Vec::new();
    let mut submit_ms = Vec::new();
    let mut start_ms = Vec::new();
    let mut warm = Vec::new();
    for i in 0..b.cold.max(1) {
        wait_no_jobs(&local).await?;
        let ready_to_started = one_run(&local, "bench-alloc").await?.0;
        let q: Vec<QueueInfo> = local.client.get("/api/alloc").await?;
        let job = q[0]
            .jobs
            .iter()
            .max_by_key(|j| j.number)
            .ok_or_else(|| anyhow::anyhow!("no job was submitted"))?;
        let run_ready = latest_ready(&local)?;
        submit_ms.push((job.submitted_us - run_ready) as f64 / 1e3);
        start_ms.push((job.started_us.unwrap_or(job.submitted_us) - job.submitted_us) as f64 / 1e3);
        cold.push(ready_to_started);
        tracing::info!("cold sample {i}: {ready_to_started:.0} ms");
        if i == 0 {
            for _ in 0..b.warm {
                warm.push(one_run(&local, "bench-alloc").await?.0);
            }
        }
    }
    let out = json!({
        "site": b.site,
        "target": b.target,
        "cold_ready_to_started_ms": cold,
        "cold_p50_ms": median(cold.clone()),
        "cold_until_submitted_ms": submit_ms,
        "cold_submitted_to_pilot_connected_ms": start_ms,
        "warm_ready_to_started_ms": warm,
        "warm_p50_ms": median(warm.clone()),
        "warm_max_ms": warm.iter().cloned().fold(f64::NAN, f64::max),
    });
    // Let the pilot leave on its own, so no job outlives the benchmark.
    wait_no_jobs(&local).await?;
    local.stop().await?;
    Ok(out)
}

/// Submits one run of `flow`, waits for it, returns its step's ready →
/// started in ms and the run.
pub(super) async fn one_run(local: &Local, flow: &str) -> anyhow::Result<(f64, RunDetail)> {
    let ids = local.client.submit(flow, None, vec![json!({})]).await?;
    local
        .client
        .wait(&ids, false, Some(Duration::from_secs(120)))
        .await?;
    let id = ids[0];
    let d = local
        .store()
        .read(move |c| crate::store::run(c, id))?
        .ok_or_else(|| anyhow::anyhow!("run {id} vanished"))?;
    let a = d
        .attempts
        .iter()
        .find(|a| a.state == "succeeded")
        .ok_or_else(|| anyhow::anyhow!("run {id} did not succeed: {:?}", d.run.error))?;
    let ms = (a.started_us.unwrap_or(0) - a.ready_us.unwrap_or(0)) as f64 / 1e3;
    Ok((ms, d))
}

fn latest_ready(local: &Local) -> anyhow::Result<i64> {
    local.store().read(|c| {
        c.query_one(
            "SELECT COALESCE(MAX(ready_us), 0) FROM attempts",
            &[],
            |r| r.i64(0),
        )
    })
}

/// Waits until the queue has no job queued or running (the idle pilot left).
async fn wait_no_jobs(local: &Local) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let q: Vec<QueueInfo> = local.client.get("/api/alloc").await?;
        if q.iter().all(|q| q.queued_jobs == 0 && q.running_jobs == 0) {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the previous pilot did not leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
