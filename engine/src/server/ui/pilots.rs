//! `/ui/pilots`: which pilots are up, where, what they run now and how much
//! walltime they have left; and the allocation queues that submit them.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::super::api::{ask, read};
use super::super::core::{AllocMsg, CoreMsg};
use super::super::App;
use super::{fail, render};
use crate::api::PilotState;
use crate::store;

#[derive(Serialize)]
struct PilotView {
    id: u64,
    name: String,
    host: String,
    state: PilotState,
    reason: Option<String>,
    cpus: u64,
    gpus: u64,
    memory_mb: u64,
    targets: String,
    batch_job: Option<String>,
    reservation: Option<String>,
    connected_us: i64,
    last_seen_us: i64,
    /// Seconds of walltime left, if the pilot is in a batch allocation.
    walltime_left_s: Option<f64>,
    /// "run 12 · multitau" for each task it holds.
    tasks: Vec<(u64, String)>,
}

/// Connected, or finishing its tasks before it leaves.
fn is_up(state: PilotState) -> bool {
    matches!(state, PilotState::Connected | PilotState::Draining)
}

pub(super) async fn page(State(app): State<App>) -> Response {
    let data = read(&app, |c| {
        Ok((store::pilots(c)?, store::active_attempts(c)?))
    })
    .await;
    let (pilots, active) = match data {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let queues = match ask(&app, |reply| CoreMsg::Alloc(AllocMsg::List { reply })).await {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let mut tasks: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for a in active {
        if let Some(p) = a.pilot_id {
            tasks.entry(p).or_default().push((a.run_id, a.step));
        }
    }
    let now = crate::util::now_us();
    let mut views: Vec<PilotView> = pilots
        .into_iter()
        .map(|p| {
            let info = &p.info;
            let res = &info.resources;
            let up = is_up(p.state);
            PilotView {
                walltime_left_s: info
                    .walltime_end_us
                    .filter(|_| up)
                    .map(|end| ((end - now) as f64 / 1e6).max(0.0)),
                cpus: u64::from(res.cpus),
                gpus: u64::from(res.gpus),
                memory_mb: res.memory_mb,
                targets: info.targets.join(", "),
                batch_job: info.batch_job.clone(),
                reservation: info.reservation.clone(),
                tasks: tasks.remove(&p.id).unwrap_or_default(),
                id: p.id,
                name: p.name,
                host: p.host,
                state: p.state,
                reason: p.reason,
                connected_us: p.connected_us,
                last_seen_us: p.last_seen_us,
            }
        })
        .collect();
    // Pilots that are up first, newest first within.
    views.sort_by_key(|p| (!is_up(p.state), std::cmp::Reverse(p.id)));
    render(
        "pilots.html",
        minijinja::context! {
            nav => "pilots",
            pilots => views,
            queues,
        },
    )
}
