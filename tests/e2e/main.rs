//! End to end, with real processes: a `beamflow server` and `beamflow pilot`s
//! started from the built binary, driven through the HTTP API. One test
//! binary, a module per topic; the flows they run are in tests/flows/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use beamflow::cli::client::Client;
use beamflow::store::RunDetail;
use serde_json::{json, Value};

#[path = "../support/harness.rs"]
mod harness;
use harness::*;

mod auth;
mod kernels;
mod mpi;
mod newcomer;
mod pilots;
mod runs;
mod scheduling;
mod shapes;
mod triggers;

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// With one pilot connected, registers `flow` and starts one run of it
/// with empty input.
async fn start_one(c: &Client, flow: &Path) -> RunDetail {
    wait_pilots(c, 1).await;
    let name = c.register(flow).await.unwrap().name;
    let id = c.submit(&name, None, vec![json!({})]).await.unwrap()[0];
    detail(c, id).await
}

/// Waits for a step to write a process id into `file`.
async fn wait_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written: the step did not start",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the first attempt of run `id` is in `state`.
async fn wait_first_attempt(c: &Client, id: u64, state: &str) -> RunDetail {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = detail(c, id).await;
        if d.attempts[0].state == state {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "attempt state {}, expected {state}",
            d.attempts[0].state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie waits for its parent to reap it: it no longer runs.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|s| !s.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
