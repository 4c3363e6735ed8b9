//! `beamflow bench sites`: what placing a step at another site costs, on
//! warm pilots. Two pilots run in this process: one at the server's own
//! site, one that says it is at another (`far`), as a pilot reaching the
//! server from another facility does.
//!
//! - single site: only the server's own pilot is connected; runs go one
//!   after another.
//! - across sites: the far pilot connects and a long step holds the
//!   server's own pilot, so each run's step is placed at the far site: the
//!   placement weighs both sites' pilots and writes its `placed` event
//!   (which this bench checks names the far site).
//!
//! The figure is each step's ready → started, as the store records it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::alloc::{median, one_run};
use crate::cli::local::{Local, LocalOptions};
use crate::site::SiteConfig;
use crate::store::Durability;

#[derive(clap::Args)]
pub struct SitesBench {
    /// Runs in each phase.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
}

const FLOW: &str = "name = \"bench-sites\"\nversion = 1\n[[steps]]\nname = \"true\"\naction = \"shell\"\non = \"cpu\"\nparams = { argv = [\"true\"] }\n";
const HOLD: &str = "name = \"bench-sites-hold\"\nversion = 1\n[[steps]]\nname = \"hold\"\naction = \"shell\"\non = \"cpu\"\nparams = { argv = [\"sleep\", \"600\"] }\n";

impl SitesBench {
    pub async fn run(self) -> anyhow::Result<Value> {
        let mut local = Local::start(LocalOptions {
            home: None,
            pilots: 0,
            cpus: None,
            prefetch: None,
            durability: Durability::Normal,
            site: SiteConfig::local(),
        })
        .await?;
        for (name, text) in [("bench-sites", FLOW), ("bench-sites-hold", HOLD)] {
            let f = local.home.join(format!("{name}.toml"));
            std::fs::write(&f, text)?;
            local.client.register(&f).await?;
        }
        // One CPU each and no prefetch: a busy pilot takes nothing more.
        local.spawn_pilot(local.pilot_options("here", Some(1), Some(0), None));
        connected(&local, 1).await?;
        let mut single = Vec::new();
        for _ in 0..self.runs {
            single.push(one_run(&local, "bench-sites").await?.0);
        }

        let hold = local
            .client
            .submit("bench-sites-hold", None, vec![json!({})])
            .await?;
        let t = Instant::now();
        while !local
            .client
            .run(hold[0])
            .await?
            .attempts
            .iter()
            .any(|a| a.state == "running")
        {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "the holding step never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        local.spawn_pilot(local.pilot_options("far-0", Some(1), Some(0), Some("far".into())));
        connected(&local, 2).await?;
        let mut cross = Vec::new();
        let mut placed = String::new();
        for _ in 0..self.runs {
            let (ms, d) = one_run(&local, "bench-sites").await?;
            let why = d
                .events
                .iter()
                .find(|e| e.kind == "placed")
                .and_then(|e| e.detail.clone())
                .unwrap_or_default();
            anyhow::ensure!(
                why.starts_with("site far "),
                "run {} was not placed at the far site: {why:?}",
                d.run.id
            );
            placed = why;
            cross.push(ms);
        }
        local.client.cancel(hold[0]).await?;
        local.stop().await?;
        let (s50, c50) = (median(single.clone()), median(cross.clone()));
        let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
        Ok(json!({
            "runs": self.runs,
            "single_site_ready_to_started_ms": single,
            "single_site_p50_ms": s50,
            "single_site_max_ms": max(&single),
            "cross_site_ready_to_started_ms": cross,
            "cross_site_p50_ms": c50,
            "cross_site_max_ms": max(&cross),
            "cross_minus_single_p50_ms": c50 - s50,
            "placed": placed,
        }))
    }
}

/// Waits until `n` pilots are connected.
async fn connected(local: &Local, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let up = local
            .client
            .pilots()
            .await?
            .iter()
            .filter(|p| p.state == crate::api::PilotState::Connected)
            .count();
        if up >= n {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "{n} pilots never connected ({up} did)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
