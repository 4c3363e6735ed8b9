//! `/api/admin/prune` (admin only): keeps the store's growth bounded by
//! deleting finished runs older than a cut-off, after writing each one, as
//! `GET /api/runs/{id}` shows it, to an archive file.
//!
//! Runs go in chunks, each its own commit, so the server keeps serving
//! pilots in between; each chunk passes through the core, which keeps any
//! run it has made active again (a retry) out of it.

use std::io::Write;
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::api::{ask, read};
use super::core::{ApiError, CoreMsg};
use super::App;
use crate::api::{PruneReport, PruneRequest};
use crate::store::{self, Batch, Op};
use crate::util::now_us;

pub(crate) fn routes() -> Router<App> {
    Router::new().route("/api/admin/prune", post(prune))
}

/// Runs per commit: small enough that a chunk commits in milliseconds.
const CHUNK: usize = 500;

async fn prune(
    State(app): State<App>,
    Json(req): Json<PruneRequest>,
) -> Result<Json<PruneReport>, ApiError> {
    if !req.older_than_s.is_finite() || req.older_than_s < 0.0 {
        return Err(ApiError::new(
            400,
            "older_than_s: a number of seconds, 0 or more",
        ));
    }
    let t0 = Instant::now();
    let before_us = now_us() - (req.older_than_s * 1e6) as i64;
    let mut rep = PruneReport {
        dry_run: req.dry_run,
        before_us,
        ..Default::default()
    };
    let mut archive = None;
    if req.archive && !req.dry_run {
        let dir = app.archive_dir.as_ref().clone();
        let path = dir.join(format!("runs-before-{}.jsonl", rfc3339(before_us)));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
        archive = Some((path.clone(), std::io::BufWriter::new(file)));
        rep.archive = Some(path);
    }
    let mut after = 0;
    loop {
        let ids = read(&app, move |c| {
            store::prune_candidates(c, before_us, after, CHUNK)
        })
        .await?;
        let Some(&last) = ids.last() else {
            break;
        };
        after = last;
        let list = ids.clone();
        let details = read(&app, move |c| {
            list.iter()
                .filter_map(|id| store::run(c, *id).transpose())
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await?;
        if let Some((path, out)) = archive.as_mut() {
            for d in &details {
                serde_json::to_writer(&mut *out, d)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
            }
            // On disk before the rows are gone.
            out.flush()
                .and_then(|()| out.get_ref().sync_data())
                .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
        }
        let taken = if req.dry_run {
            ids.len()
        } else {
            ask(&app, |reply| CoreMsg::Prune {
                runs: ids.into_iter().map(crate::api::RunId).collect(),
                before_us,
                reply,
            })
            .await?
        };
        rep.runs += taken as u64;
        for d in &details {
            rep.attempts += d.attempts.len() as u64;
            rep.events += d.events.len() as u64;
        }
    }
    if !req.dry_run {
        app.store.submit(Batch {
            ops: vec![Op::PruneLogs { before_us }],
            effects: vec![],
        });
        app.store.flush().await;
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    tracing::info!(
        "pruned {} runs ({} attempts) that finished before {}{}",
        rep.runs,
        rep.attempts,
        rfc3339(before_us),
        if req.dry_run { " (dry run)" } else { "" }
    );
    Ok(Json(rep))
}

fn rfc3339(us: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64),
    )
    .to_string()
}
