//! Reliability, with real processes on loopback. Fault injection: pilots
//! and the server killed with SIGKILL in the middle of a burst, a full run
//! directory, and steps that panic, abort, segfault or kill their own pilot
//! — whatever happens, every run ends succeeded or failed with a stated
//! reason; no run is lost and no step runs more often than its recorded
//! attempts. Bounded growth: pruning old runs from the store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use beamflow::cli::client::Client;
use beamflow::store::{RunDetail, RunRow};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn alive(p: &mut Proc) -> bool {
    matches!(p.0.try_wait(), Ok(None))
}

/// The attempt ids a step wrote into its log, one line per execution.
fn executions(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Polls the run list until every run is finished or the deadline passes.
async fn wait_all_done(c: &Client, n: usize, deadline: Instant) -> Vec<RunRow> {
    loop {
        let runs: Vec<RunRow> = c.get("/api/runs?limit=100000").await.unwrap();
        let done = runs
            .iter()
            .filter(|r| r.state == "succeeded" || r.state == "failed")
            .count();
        if done == n || Instant::now() > deadline {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const BURST: &str = r#"
name = "burst"
version = 1
[input.n]
type = "int"
[[steps]]
name = "write"
action = "shell"
params = { script = "echo {{ task.id }} >> {{ run.dir }}/write.log" }
[[steps]]
name = "think"
action = "kernel"
kernel = "noop"
[[steps]]
name = "check"
action = "shell"
params = { script = "echo {{ task.id }} >> {{ run.dir }}/check.log" }
"#;

const RUNS: usize = 2000;

/// 2,000 runs of a three-step flow while pilots and the server are killed
/// with SIGKILL at random moments (a fixed seed unless
/// `BEAMFLOW_FAULT_SEED` is set) and new pilots take the dead ones' place.
#[test]
fn a_burst_survives_pilots_and_the_server_killed_at_random() {
    let seed: u64 = std::env::var("BEAMFLOW_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::new();
    let bind = free_bind();
    let server_args = ["--pilot-timeout", "2s", "--heartbeat", "0.5s"];
    let (mut server, mut c) = env.server(&bind, &server_args);
    let mut pilots: Vec<Proc> = (0..3).map(|i| env.pilot(&format!("p{i}"), 2)).collect();
    let mut next_pilot = 3;
    let flow = env.flow("burst", BURST);
    let rt = rt();
    let started = Instant::now();
    let ids = rt.block_on(async {
        wait_pilots(&c, 3).await;
        c.register(&flow).await.unwrap();
        let inputs: Vec<Value> = (0..RUNS).map(|n| json!({ "n": n })).collect();
        c.submit("burst", None, inputs).await.unwrap()
    });
    assert_eq!(ids.len(), RUNS);

    let (mut pilot_kills, mut server_kills, mut max_rss) = (0, 0, 0u64);
    let deadline = Instant::now() + Duration::from_secs(420);
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(1000..2500));
    loop {
        if let Some(kib) = rss_kib(server.0.id()) {
            max_rss = max_rss.max(kib);
        }
        let runs: Result<Vec<RunRow>, _> =
            rt.block_on(c.get::<Vec<RunRow>>("/api/runs?state=queued&limit=1"));
        let running: Result<Vec<RunRow>, _> =
            rt.block_on(c.get::<Vec<RunRow>>("/api/runs?state=running&limit=1"));
        if let (Ok(q), Ok(r)) = (&runs, &running) {
            if q.is_empty() && r.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the burst did not finish within the deadline (seed {seed})"
        );
        // Kill only while there is work left, at most ten times in all.
        if Instant::now() >= next_kill && pilot_kills + server_kills < 10 {
            if rng.random_bool(0.3) {
                server.kill9();
                server_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
                (server, c) = env.server(&bind, &server_args);
            } else {
                let victim = rng.random_range(0..pilots.len());
                pilots[victim].kill9();
                pilot_kills += 1;
                pilots[victim] = env.pilot(&format!("p{next_pilot}"), 2);
                next_pilot += 1;
            }
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1000..3000));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();

    rt.block_on(async {
        let runs = wait_all_done(&c, RUNS, Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(runs.len(), RUNS, "runs went missing (seed {seed})");
        let mine: HashSet<u64> = ids.iter().copied().collect();
        assert!(runs.iter().all(|r| mine.contains(&r.id)));
        let mut failed = 0;
        let (mut lost, mut attempts) = (0, 0);
        for r in &runs {
            match r.state.as_str() {
                "succeeded" => {}
                "failed" => {
                    failed += 1;
                    let e = r.error.as_deref().unwrap_or("");
                    assert!(!e.is_empty(), "run {} failed without a reason", r.id);
                }
                other => panic!("run {} ended {other} (seed {seed})", r.id),
            }
            let d = detail(&c, r.id).await;
            attempts += d.attempts.len();
            lost += d.attempts.iter().filter(|a| a.state == "lost").count();
            // Each execution of a shell step is one of its recorded attempts,
            // and no attempt executed twice.
            let dir = Path::new(&r.dir);
            for step in ["write", "check"] {
                let ran = executions(&dir.join(format!("{step}.log")));
                let recorded: HashMap<u64, &str> = d
                    .attempts
                    .iter()
                    .filter(|a| a.step == step)
                    .map(|a| (a.id, a.state.as_str()))
                    .collect();
                let distinct: HashSet<u64> = ran.iter().copied().collect();
                assert_eq!(
                    distinct.len(),
                    ran.len(),
                    "run {}: an attempt of `{step}` ran twice: {ran:?} (seed {seed})",
                    r.id
                );
                for id in &ran {
                    assert!(
                        recorded.contains_key(id),
                        "run {}: `{step}` ran as attempt {id}, which is not recorded: {recorded:?} (seed {seed})",
                        r.id
                    );
                }
                if let Some((id, _)) = recorded.iter().find(|(_, s)| **s == "succeeded") {
                    assert!(
                        ran.contains(id),
                        "run {}: `{step}` attempt {id} succeeded without running (seed {seed})",
                        r.id
                    );
                }
            }
        }
        eprintln!(
            "fault injection (seed {seed}): {RUNS} runs in {:.1} s, {} succeeded, {failed} failed; \
             {pilot_kills} pilots and {server_kills} servers killed; {attempts} attempts, \
             {lost} lost and run again; server RSS at most {:.1} MiB",
            elapsed.as_secs_f64(),
            RUNS - failed,
            max_rss as f64 / 1024.0
        );
        // Pilot deaths cost no try, so nothing here may fail.
        assert_eq!(failed, 0, "(seed {seed})");
        assert!(pilot_kills + server_kills > 0, "nothing was killed");
    });
    // The server keeps only unfinished runs in memory: 2,000 of them
    // fit well within this.
    assert!(
        max_rss < 256 * 1024,
        "server RSS reached {:.1} MiB",
        max_rss as f64 / 1024.0
    );
    for p in &mut pilots {
        assert!(alive(p), "a pilot died without being killed");
    }
}

/// A tmpfs of 1 MiB as the run directory. Mounting needs root (CI runs as root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "this test mounts a 1 MiB tmpfs and needs root: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_run_directory_fails_steps_not_the_pilot() {
    let env = Env::new();
    let runs_dir = env.home.join("small-disk");
    let disk = SmallDisk::mount(&runs_dir);
    let (_server, c) = env.server("127.0.0.1:0", &["--runs-dir", disk.0.to_str().unwrap()]);
    let mut pilot = env.pilot("a", 2);
    let fill = env.flow(
        "fill",
        r#"
name = "fill"
version = 1
[[steps]]
name = "fill"
action = "shell"
params = { script = "head -c 4000000 /dev/zero > {{ run.dir }}/big" }
"#,
    );
    let small = env.flow(
        "small",
        r#"
name = "small"
version = 1
[[steps]]
name = "write"
action = "shell"
params = { script = "seq 1 1000 > {{ run.dir }}/numbers" }
[[steps]]
name = "think"
action = "kernel"
kernel = "noop"
"#,
    );
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&fill).await.unwrap();
        c.register(&small).await.unwrap();
        let id = c.submit("fill", None, vec![json!({})]).await.unwrap()[0];
        let r = &c
            .wait(&[id], false, Some(Duration::from_secs(30)))
            .await
            .unwrap()[0];
        assert_eq!(r.state, "failed");
        let d = detail(&c, id).await;
        let err = d.attempts[0].error.as_deref().unwrap_or("");
        assert!(err.contains("No space left on device"), "{err}");
        // The disk stays full: the next runs fail too, each with its reason.
        let ids = c.submit("small", None, vec![json!({}); 3]).await.unwrap();
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        for r in &runs {
            assert_eq!(r.state, "failed", "{r:?}");
            let d = detail(&c, r.id).await;
            let err = d.attempts[0].error.as_deref().unwrap_or("");
            assert!(err.contains("No space left on device"), "{err}");
        }
        // Space freed, the same pilot runs the flow again.
        std::fs::remove_file(Path::new(&d.run.dir).join("big")).unwrap();
        let ids = c.submit("small", None, vec![json!({}); 3]).await.unwrap();
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(runs.iter().all(|r| r.state == "succeeded"), "{runs:?}");
        let numbers = std::fs::read_to_string(Path::new(&runs[0].dir).join("numbers")).unwrap();
        assert_eq!(numbers.lines().count(), 1000);
    });
    assert!(alive(&mut pilot), "the pilot died of a full disk");
}

const FAULTS: &str = r#"
name = "faults"
version = 1
[input.mode]
type = "string"
[input.isolate]
type = "string"
default = "no"
[[steps]]
name = "in_pilot"
action = "kernel"
kernel = "fault"
when = "input.isolate == 'no'"
params = { mode = "{{ input.mode }}" }
[[steps]]
name = "isolated"
action = "kernel"
kernel = "fault"
isolate = true
when = "input.isolate == 'yes'"
params = { mode = "{{ input.mode }}" }
"#;

/// Waits until the run is finished and returns its record.
async fn finished(c: &Client, id: u64) -> RunDetail {
    c.wait(&[id], false, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    detail(c, id).await
}

#[test]
fn crashing_kernels_fail_their_step_and_spare_the_pilots() {
    let env = Env::new();
    let (_server, c) = env.server(
        "127.0.0.1:0",
        &["--pilot-timeout", "1s", "--heartbeat", "0.25s"],
    );
    let mut a = env.pilot("a", 2);
    let flow = env.flow("faults", FAULTS);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let run = |mode: &str, isolate: &str| {
            let input = json!({ "mode": mode, "isolate": isolate });
            let c = c.clone();
            async move { c.submit("faults", None, vec![input]).await.unwrap()[0] }
        };
        // Isolated, a segfault and an abort end the step's own process.
        for (mode, signal) in [("segfault", "SIGSEGV"), ("abort", "SIGABRT")] {
            let d = finished(&c, run(mode, "yes").await).await;
            assert_eq!(d.run.state, "failed");
            let att = d.attempts.iter().find(|x| x.step == "isolated").unwrap();
            let err = att.error.as_deref().unwrap_or("");
            assert!(err.contains("killed by signal") && err.contains(signal), "{err}");
        }
        // In the pilot, a panic and an error fail the step.
        for (mode, said) in [("panic", "panicked"), ("error", "failed on purpose")] {
            let d = finished(&c, run(mode, "no").await).await;
            assert_eq!(d.run.state, "failed");
            let err = d.attempts[0].error.as_deref().unwrap_or("");
            assert!(err.contains(said), "{err}");
        }
        assert!(alive(&mut a), "pilot a died");
        // An abort in the pilot takes the pilot down; its step is lost, and
        // runs again isolated on the next pilot, where it fails alone.
        let id = run("abort", "no").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(&mut a) {
            assert!(Instant::now() < deadline, "the abort did not end pilot a");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut b = env.pilot("b", 2);
        let d = finished(&c, id).await;
        assert_eq!(d.run.state, "failed");
        let states: Vec<&str> = d.attempts.iter().map(|x| x.state.as_str()).collect();
        assert_eq!(states, ["lost", "failed"], "{:?}", d.attempts);
        let last = d.attempts[1].error.as_deref().unwrap_or("");
        assert!(last.contains("SIGABRT"), "{last}");
        assert!(alive(&mut b), "the isolated retry took pilot b down");
        // Pilot b still works.
        let ok = env.flow(
            "ok",
            "name = \"ok\"\nversion = 1\n[[steps]]\nname = \"n\"\naction = \"kernel\"\nkernel = \"noop\"\n",
        );
        c.register(&ok).await.unwrap();
        let id = c.submit("ok", None, vec![json!({})]).await.unwrap()[0];
        assert_eq!(finished(&c, id).await.run.state, "succeeded");
    });
}

/// A step that kills whichever pilot runs it is given up on after three
/// pilots, rather than taking every pilot down in turn.
#[test]
fn a_step_that_kills_its_pilots_is_given_up_after_three() {
    let env = Env::new();
    let (_server, c) = env.server(
        "127.0.0.1:0",
        &["--pilot-timeout", "1s", "--heartbeat", "0.25s"],
    );
    let flow = env.flow(
        "killer",
        r#"
name = "killer"
version = 1
[[steps]]
name = "kill"
action = "shell"
params = { script = "echo {{ task.id }} >> {{ run.dir }}/ran; kill -9 $PPID; sleep 5" }
"#,
    );
    let mut pilots: Vec<Proc> = Vec::new();
    rt().block_on(async {
        pilots.push(env.pilot("k0", 2));
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let id = c.submit("killer", None, vec![json!({})]).await.unwrap()[0];
        let deadline = Instant::now() + Duration::from_secs(60);
        let d = loop {
            let d = detail(&c, id).await;
            if d.run.state == "failed" {
                break d;
            }
            assert!(Instant::now() < deadline, "{d:?}");
            // Replace a dead pilot once its step waits for another, as an
            // allocation queue would.
            let waiting = d.attempts.last().is_some_and(|a| a.state == "ready");
            if waiting && !pilots.iter_mut().any(alive) {
                pilots.push(env.pilot(&format!("k{}", pilots.len()), 2));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let states: Vec<&str> = d.attempts.iter().map(|x| x.state.as_str()).collect();
        assert_eq!(states, ["lost", "lost", "lost"], "{:?}", d.attempts);
        let err = d.run.error.as_deref().unwrap_or("");
        assert!(err.contains("3 pilots died while running it"), "{err}");
        assert_eq!(pilots.len(), 3, "a fourth pilot was needed");
        let ran = std::fs::read_to_string(Path::new(&d.run.dir).join("ran")).unwrap();
        assert_eq!(ran.lines().count(), 3);
    });
}

#[test]
fn prune_archives_and_deletes_old_runs_and_never_reuses_their_ids() {
    let env = Env::new();
    let bind = free_bind();
    let (mut server, c) = env.server(&bind, &[]);
    let _pilot = env.pilot("a", 2);
    let flow = env.flow(
        "tiny",
        r#"
name = "tiny"
version = 1
[input.n]
type = "int"
[[steps]]
name = "n"
action = "shell"
params = { script = "echo {{ input.n }} > {{ run.dir }}/n" }
"#,
    );
    let rt = rt();
    let old = rt.block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let inputs: Vec<Value> = (0..20).map(|n| json!({ "n": n })).collect();
        let ids = c.submit("tiny", None, inputs).await.unwrap();
        c.wait(&ids, false, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        ids
    });
    // A submitter may not prune.
    let submitter = env.beamflow_ok(&["token", "add", "ci", "--role", "submitter"]);
    let o = std::process::Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .env("BEAMFLOW_TOKEN", submitter.trim())
        .args(["admin", "prune", "--older-than", "0s"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs an admin token")
            || String::from_utf8_lossy(&o.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Nothing is a day old yet.
    let out = env.beamflow_ok(&["--json", "admin", "prune", "--older-than", "1d"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["runs"], 0, "{r}");
    // A dry run counts, deletes nothing.
    std::thread::sleep(Duration::from_millis(50));
    let out = env.beamflow_ok(&[
        "--json",
        "admin",
        "prune",
        "--older-than",
        "0s",
        "--dry-run",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["runs"].as_u64(), r["attempts"].as_u64()),
        (Some(20), Some(20)),
        "{r}"
    );
    assert!(r["archive"].is_null());
    let out = env.beamflow_ok(&["--json", "admin", "prune", "--older-than", "0s"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["runs"], 20, "{r}");
    // The archive holds each run as the API showed it.
    let archive = std::fs::read_to_string(r["archive"].as_str().unwrap()).unwrap();
    let lines: Vec<Value> = archive
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let archived: HashSet<u64> = lines
        .iter()
        .map(|l| l["run"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(archived, old.iter().copied().collect());
    assert!(lines
        .iter()
        .all(|l| l["attempts"][0]["state"] == "succeeded"
            && !l["events"].as_array().unwrap().is_empty()));
    // Restarted on the emptied store, the server still knows which ids
    // were handed out.
    server.kill9();
    let (_server, c) = env.server(&bind, &[]);
    rt.block_on(async {
        let left: Vec<RunRow> = c.get("/api/runs?limit=1000").await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        let gone = c.get::<Value>(&format!("/api/runs/{}", old[0])).await;
        assert!(gone.is_err());
        wait_pilots(&c, 1).await;
        // New runs get new ids, never a pruned run's (nor its directory).
        let ids = c
            .submit("tiny", None, vec![json!({ "n": 99 })])
            .await
            .unwrap();
        assert!(ids[0] > *old.iter().max().unwrap(), "{ids:?} after {old:?}");
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "succeeded");
    });
}

/// A cancelled step gets SIGTERM and five seconds to clean up (a launcher
/// stops its remote ranks); one that ignores SIGTERM is killed after them.
#[test]
fn cancel_terminates_gently_then_kills() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _p = env.pilot("a", 2);
    let flow = env.flow(
        "stop",
        r#"
name = "stop"
version = 1
[input.on_term]
type = "string"
[[steps]]
name = "hang"
action = "shell"
params = { script = "trap '{{ input.on_term }}' TERM; echo $$ > {{ task.dir }}/pid; while true; do sleep 0.1; done" }
"#,
    );
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        for (on_term, cleans) in [("echo cleaned > cleanup; exit 0", true), ("", false)] {
            let id = c
                .submit("stop", None, vec![json!({ "on_term": on_term })])
                .await
                .unwrap()[0];
            let d = detail(&c, id).await;
            let task_dir = Path::new(&d.run.dir).join("steps/hang/attempt-1");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !task_dir.join("pid").exists() {
                assert!(Instant::now() < deadline, "the step did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let cancelled_at = Instant::now();
            let _: Value = c
                .post(&format!("/api/runs/{id}/cancel"), &json!({}))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let d = detail(&c, id).await;
                if d.attempts[0].state == "cancelled" {
                    break;
                }
                assert!(Instant::now() < deadline, "{:?}", d.attempts);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let took = cancelled_at.elapsed();
            assert_eq!(task_dir.join("cleanup").exists(), cleans, "{on_term}");
            if cleans {
                assert!(took < Duration::from_secs(4), "{took:?}");
            } else {
                assert!(
                    took >= Duration::from_secs(5),
                    "killed before the grace: {took:?}"
                );
            }
        }
    });
}
