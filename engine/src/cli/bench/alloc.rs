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
    /// Also measure time-to-result while the target's pilot jobs are
    /// killed (`scancel`/`qdel`, as a preemption does) this often, e.g.
    /// `15s`; the target is then run as preemptable.
    #[arg(long)]
    pub preempt_every: Option<String>,
    /// Runs in each time-to-result phase (with and without preemption).
    #[arg(long, default_value_t = 6)]
    pub preempt_runs: usize,
    /// Seconds each of those runs' one step works.
    #[arg(long, default_value_t = 4.0)]
    pub step_s: f64,
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
    let mut target = site.effective(&b.target)?;
    let preempt_every = b
        .preempt_every
        .as_deref()
        .map(crate::units::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--preempt-every: {e}"))?;
    if preempt_every.is_some() {
        target.preemptable = true;
    }
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
    let work = WORK
        .replace("TARGET", &b.target)
        .replace("SECONDS", &b.step_s.to_string());
    let f = local.home.join("bench-alloc-work.toml");
    std::fs::write(&f, work)?;
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
    let mut preemption = Value::Null;
    if let Some(every) = preempt_every {
        let scheduler = crate::batch::Scheduler::for_site(site.scheduler)
            .ok_or_else(|| anyhow::anyhow!("site {} has no batch scheduler", site.name))?;
        let calm = time_to_result(&local, b.preempt_runs, None).await?;
        let rough = time_to_result(
            &local,
            b.preempt_runs,
            Some((Duration::from_secs_f64(every), scheduler)),
        )
        .await?;
        preemption = json!({
            "every_s": every,
            "runs": b.preempt_runs,
            "step_s": b.step_s,
            "without": calm,
            "with": rough,
        });
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
        "preemption": preemption,
    });
    // Let the pilot leave on its own, so no job outlives the benchmark.
    wait_no_jobs(&local).await?;
    local.stop().await?;
    Ok(out)
}

const WORK: &str = "name = \"bench-alloc-work\"\nversion = 1\n[[steps]]\nname = \"work\"\naction = \"shell\"\non = \"TARGET\"\nparams = { argv = [\"sleep\", \"SECONDS\"] }\n";

/// Submits `n` runs of one working step at once and waits for them all;
/// with `preempt`, the queue's running pilot job is killed every
/// interval meanwhile. Time to result per run (created → finished),
/// makespan, how many attempts were preempted and retries used.
async fn time_to_result(
    local: &Local,
    n: usize,
    preempt: Option<(Duration, crate::batch::Scheduler)>,
) -> anyhow::Result<Value> {
    let t = Instant::now();
    let ids = local
        .client
        .submit("bench-alloc-work", None, vec![json!({}); n])
        .await?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = preempt.map(|(every, scheduler)| {
        let client = local.client.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut killed = 0u32;
            loop {
                tokio::time::sleep(every).await;
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return killed;
                }
                let Ok(q) = client.queues().await else {
                    continue;
                };
                let running: Vec<String> = q
                    .iter()
                    .flat_map(|q| &q.jobs)
                    .filter(|j| j.state == "running")
                    .map(|j| j.job_id.clone())
                    .take(1)
                    .collect();
                if !running.is_empty() && scheduler.cancel_all(&running).await.is_ok() {
                    killed += 1;
                    tracing::info!("preempted job {}", running[0]);
                }
            }
        })
    });
    let waited = local
        .client
        .wait(&ids, false, Some(Duration::from_secs(600)))
        .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let makespan = t.elapsed().as_secs_f64();
    let killed = match killer {
        Some(k) => k.await.unwrap_or(0),
        None => 0,
    };
    waited?;
    let (mut ttr, mut preempted, mut retries) = (Vec::new(), 0, 0);
    for &id in &ids {
        let d = local
            .store()
            .read(move |c| crate::store::run(c, id))?
            .ok_or_else(|| anyhow::anyhow!("run {id} vanished"))?;
        anyhow::ensure!(
            d.run.state == "succeeded",
            "run {id} ended {}: {:?}",
            d.run.state,
            d.run.error
        );
        ttr.push((d.run.finished_us.unwrap_or(0) - d.run.created_us) as f64 / 1e6);
        preempted += d.attempts.iter().filter(|a| a.state == "preempted").count();
        retries += d.attempts.iter().filter(|a| a.counts_retry).count();
    }
    Ok(json!({
        "time_to_result_s": ttr,
        "time_to_result_p50_s": median(ttr.clone()),
        "makespan_s": makespan,
        "jobs_killed": killed,
        "attempts_preempted": preempted,
        "retries_used": retries,
    }))
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
