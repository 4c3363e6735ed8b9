//! The allocation manager against a real Slurm (three nodes on this host): a `beamflow server`
//! with the `local-slurm` site submits pilot jobs with sbatch when work waits,
//! a burst of runs completes on them, idle pilots leave, `scancel` loses
//! nothing and uses no retry, and a reservation made with `scontrol create
//! reservation` gets its warm pilot and the realtime steps, and a pilot
//! holding a 3-node job starts steps across its nodes with srun. With a
//! second site behind an agent: a far site's scheduler run by the agent
//! (killed mid-submission, nothing submitted twice), work routed away from
//! a site whose job is held, a preempted pilot's step finished at the
//! other site without a retry, pilots reaching the server through the
//! agent's relay, and an XPCS run staged from a loopback "beamline" DTN to
//! the far site and its results returned.
//!
//! The tests share one small cluster, so they take turns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use beamflow::alloc::QueueInfo;
use beamflow::cli::client::Client;
use beamflow::store::RunDetail;
use serde_json::{json, Value};

#[path = "support/slurm.rs"]
mod slurm;

const BIN: &str = env!("CARGO_BIN_EXE_beamflow");
static TURN: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A server with the local-slurm site; killed (and its jobs cancelled) on drop.
struct Server {
    child: Child,
    home: PathBuf,
    client: Client,
    _tmp: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Jobs this server submitted must not outlive the test — and only
        // those: the other tests' servers share the cluster. sbatch ran in
        // the job's directory under this home, squeue's %Z.
        let _ = Command::new("bash")
            .arg("-c")
            .arg(r#"squeue -h -o '%i %Z' | awk -v home="$1/" 'index($2 "/", home) == 1 {print $1}' | xargs -r scancel"#)
            .arg("cancel-ours")
            .arg(&self.home)
            .status();
    }
}

fn server() -> Server {
    server_with(&root().join("site-configs/local-slurm.toml"), &[], None)
}

/// A server for site config `site`, with `extra` server flags and `path`
/// as its PATH (wrappers before the scheduler's commands) when given.
fn server_with(site: &Path, extra: &[&str], path: Option<&str>) -> Server {
    slurm::cluster();
    let tmp = tempfile::Builder::new()
        .prefix("beamflow-slurm-alloc-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = std::fs::File::create(tmp.path().join("server.log")).unwrap();
    let child = Command::new(BIN)
        .args([
            "--home",
            home.to_str().unwrap(),
            "server",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--site")
        .arg(site)
        .args([
            "--alloc-poll",
            "2s",
            "--pilot-timeout",
            "10s",
            "--heartbeat",
            "1s",
        ])
        .args(extra)
        .envs(path.map(|p| ("PATH", p)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        if let Ok(text) = std::fs::read_to_string(home.join("server.json")) {
            if serde_json::from_str::<Value>(&text).is_ok() {
                // server.json names the certificate the client pins.
                let token = std::fs::read_to_string(home.join("token")).unwrap();
                break Client::discover(&home, None, Some(token.trim().into()), None).unwrap();
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    Server {
        child,
        home,
        client,
        _tmp: tmp,
    }
}

impl Server {
    /// Runs a `beamflow` client command against this server.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["--home", self.home.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    }
    fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "beamflow {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn register(&self, name: &str, src: &str) {
        let p = self.home.join(format!("{name}.toml"));
        std::fs::write(&p, src).unwrap();
        self.cli_ok(&["flow", "register", p.to_str().unwrap()]);
    }
    /// A `local-slurm` cpu queue of at most two jobs, both may wait at once.
    fn add_cpu_queue(&self, idle_timeout: &str) -> String {
        self.cli_ok(&[
            "alloc",
            "add",
            "--site",
            "local-slurm",
            "--target",
            "cpu",
            "--max-jobs",
            "2",
            "--backlog",
            "2",
            "--idle-timeout",
            idle_timeout,
        ])
    }
    fn log(&self) -> String {
        self.cli_ok(&["alloc", "log"])
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn submit(c: &Client, flow: &str, inputs: Vec<Value>) -> Vec<u64> {
    let r: Value = c
        .post("/api/runs", &json!({ "flow": flow, "inputs": inputs }))
        .await
        .unwrap();
    r["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

async fn detail(c: &Client, id: u64) -> RunDetail {
    c.get(&format!("/api/runs/{id}")).await.unwrap()
}

async fn queues(c: &Client) -> Vec<QueueInfo> {
    c.get("/api/alloc").await.unwrap()
}

/// Waits for `cond` on the allocation queues, failing with `what` and the log.
async fn wait_queues(s: &Server, what: &str, secs: u64, cond: impl Fn(&[QueueInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let q = queues(&s.client).await;
        if cond(&q) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs}s: {q:#?}\nlog:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_runs(s: &Server, ids: &[u64], secs: u64) -> Vec<RunDetail> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = Vec::new();
        for &id in ids {
            all.push(detail(&s.client, id).await);
        }
        if all
            .iter()
            .all(|d| matches!(d.run.state.as_str(), "succeeded" | "failed" | "cancelled"))
        {
            return all;
        }
        let states: Vec<&str> = all.iter().map(|d| d.run.state.as_str()).collect();
        assert!(
            Instant::now() < deadline,
            "runs not done within {secs}s: {states:?}\nlog:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BURST: &str = r#"
name = "burst"
version = 1
[input.n]
type = "int"
[[steps]]
name = "work"
action = "shell"
on = "cpu"
timeout = "2m"
outputs = ["job"]
[steps.params]
script = 'sleep 0.2; printf "{\"job\": \"%s\"}" "${SLURM_JOB_ID:-none}" > "$BEAMFLOW_OUTPUTS"'
"#;

#[test]
fn burst_runs_on_pilots_the_manager_submits_and_idle_pilots_leave() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    s.register("burst", BURST);
    s.register(
        "gated",
        "name = \"gated\"\nversion = 1\n[[steps]]\nname = \"hold\"\naction = \"shell\"\non = \"edge\"\nparams = { argv = [\"true\"] }\n[[steps]]\nname = \"work\"\naction = \"shell\"\non = \"cpu\"\nafter = [\"hold\"]\nparams = { argv = [\"true\"] }\n",
    );
    let out = s.add_cpu_queue("3s");
    assert!(out.contains("allocation queue 1"), "{out}");
    rt().block_on(async {
        // Nothing waits: nothing is submitted. Nor for a cpu step still
        // waiting on a step nobody can run yet (no pilot serves `edge`).
        let gated = submit(&s.client, "gated", vec![json!({})]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(queues(&s.client).await[0].jobs.is_empty(), "{}", s.log());
        let _: Value = s
            .client
            .post(&format!("/api/runs/{}/cancel", gated[0]), &json!({}))
            .await
            .unwrap();

        let ids = submit(
            &s.client,
            "burst",
            (0..12).map(|n| json!({ "n": n })).collect(),
        )
        .await;
        // Never more than two jobs at once, whatever waits.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let q = &queues(&s.client).await[0];
            assert!(q.queued_jobs + q.running_jobs <= 2, "{q:#?}");
            let mut done = true;
            for &id in &ids {
                if detail(&s.client, id).await.run.state != "succeeded" {
                    done = false;
                }
            }
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "burst not done:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let runs = wait_runs(&s, &ids, 5).await;
        let mut jobs = std::collections::BTreeSet::new();
        for d in &runs {
            let a = d.attempts.iter().find(|a| a.state == "succeeded").unwrap();
            let job = a.outputs.as_ref().unwrap()["job"]
                .as_str()
                .unwrap()
                .to_string();
            assert_ne!(
                job, "none",
                "run {} did not run inside a Slurm job",
                d.run.id
            );
            jobs.insert(job);
        }
        let q = &queues(&s.client).await[0];
        let submitted: Vec<&str> = q.jobs.iter().map(|j| j.job_id.as_str()).collect();
        for j in &jobs {
            assert!(
                submitted.contains(&j.as_str()),
                "job {j} is not one of the queue's {submitted:?}"
            );
        }
        // Latency of the first run (no pilot yet) and of later ones (warm pilot).
        let lat = |d: &RunDetail| {
            let a = &d.attempts[0];
            (a.started_us.unwrap() - a.ready_us.unwrap()) as f64 / 1e3
        };
        eprintln!(
            "slurm cold start: ready→started {:.0} ms (run {}); warm: {:?} ms",
            lat(&runs[0]),
            runs[0].run.id,
            runs[1..].iter().map(|d| lat(d).round()).collect::<Vec<_>>()
        );
        // Idle pilots leave, and their jobs end.
        wait_queues(&s, "the pilots leave when idle", 30, |q| {
            q[0].running_jobs == 0 && q[0].queued_jobs == 0
        })
        .await;
        let q = &queues(&s.client).await[0];
        assert!(
            q.jobs
                .iter()
                .all(|j| j.reason.as_deref().unwrap_or("").contains("idle")),
            "{q:#?}"
        );
        let log = s.log();
        assert!(log.contains("submitted job"), "{log}");
        assert!(log.contains("started: pilot"), "{log}");
    });
}

#[test]
fn a_pilot_killed_by_scancel_loses_nothing_and_uses_no_retry() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    s.register(
        "long",
        r#"
name = "long"
version = 1
[input.n]
type = "int"
[[steps]]
name = "work"
action = "shell"
on = "cpu"
timeout = "2m"
[steps.params]
script = 'sleep 4; echo done {{ input.n }}'
"#,
    );
    s.add_cpu_queue("2s");
    rt().block_on(async {
        let ids = submit(
            &s.client,
            "long",
            vec![json!({ "n": 1 }), json!({ "n": 2 })],
        )
        .await;
        // Both running on pilots in Slurm jobs.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut running = 0;
            for &id in &ids {
                let d = detail(&s.client, id).await;
                running += d.attempts.iter().filter(|a| a.state == "running").count();
            }
            if running == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "not running:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let q = &queues(&s.client).await[0];
        let victims: Vec<String> = q
            .jobs
            .iter()
            .filter(|j| j.state == "running")
            .map(|j| j.job_id.clone())
            .collect();
        assert!(!victims.is_empty());
        let st = Command::new("scancel").args(&victims).status().unwrap();
        assert!(st.success());
        let runs = wait_runs(&s, &ids, 90).await;
        for d in &runs {
            assert_eq!(
                d.run.state, "succeeded",
                "run {}: {:#?}",
                d.run.id, d.attempts
            );
            // The interrupted attempt is recorded, requeued, and not counted.
            assert!(d.attempts.len() >= 2, "{:#?}", d.attempts);
            assert!(
                d.attempts.iter().all(|a| !a.counts_retry),
                "a retry was used: {:#?}",
                d.attempts
            );
            assert!(d
                .attempts
                .iter()
                .any(|a| a.state == "lost" || a.state == "cancelled"));
        }
        let log = s.log();
        for v in &victims {
            assert!(log.contains(&format!("job {v} ended")), "{log}");
        }
    });
}

#[test]
fn a_reservation_keeps_a_warm_pilot_that_takes_the_realtime_steps() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let name = format!("bf_test_{}", std::process::id());
    let ok = Command::new("scontrol")
        .args(["create", "reservation"])
        .arg(format!("ReservationName={name}"))
        .args([
            "StartTime=now",
            "Duration=10",
            "Nodes=ALL",
            "Users=root",
            "Flags=IGNORE_JOBS",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    struct DropResv(String);
    impl Drop for DropResv {
        fn drop(&mut self) {
            let _ = Command::new("scontrol")
                .args(["delete"])
                .arg(format!("ReservationName={}", self.0))
                .status();
        }
    }
    let _resv = DropResv(name.clone());
    s.register(
        "beam",
        r#"
name = "beam"
version = 1
[input.n]
type = "int"
[[steps]]
name = "correlate"
action = "shell"
on = "realtime"
outputs = ["reservation"]
[steps.params]
script = 'printf "{\"reservation\": \"%s\"}" "${SLURM_JOB_RESERVATION:-}" > "$BEAMFLOW_OUTPUTS"'
[[steps]]
name = "archive"
action = "shell"
on = "cpu"
after = ["correlate"]
[steps.params]
script = 'echo archived'
"#,
    );
    let out = s.cli_ok(&[
        "alloc",
        "add",
        "--site",
        "local-slurm",
        "--target",
        "cpu",
        "--max-jobs",
        "1",
        "--reservation",
        &name,
        "--window",
        "now..+5m",
        "--warm",
        "1",
    ]);
    assert!(
        out.contains(&format!("reservation {name} keeping 1 warm")),
        "{out}"
    );
    rt().block_on(async {
        // A pilot comes up in the reservation before any work arrives.
        wait_queues(&s, "a warm pilot starts", 60, |q| q[0].running_jobs == 1).await;
        let pilots: Vec<Value> = s.client.get("/api/pilots").await.unwrap();
        let p = pilots.iter().find(|p| p["state"] == "connected").unwrap();
        assert_eq!(p["info"]["reservation"], json!(name));
        let targets = p["info"]["targets"].as_array().unwrap();
        assert_eq!(targets[0], "realtime");
        // Work: the realtime step runs in the reservation; the cpu step after
        // it runs on the same pilot because that pilot is idle.
        let ids = submit(
            &s.client,
            "beam",
            (0..3).map(|n| json!({ "n": n })).collect(),
        )
        .await;
        let runs = wait_runs(&s, &ids, 60).await;
        for d in &runs {
            assert_eq!(d.run.state, "succeeded", "{:#?}", d.attempts);
            let c = d.attempts.iter().find(|a| a.step == "correlate").unwrap();
            assert_eq!(c.outputs.as_ref().unwrap()["reservation"], json!(name));
        }
        // The warm pilot stays although idle (it leaves at the window's end).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(queues(&s.client).await[0].running_jobs, 1);
        // Removing the queue needs --cancel while its job runs.
        let o = s.cli(&["alloc", "remove", "1"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--cancel"));
        s.cli_ok(&["alloc", "remove", "1", "--cancel"]);
    });
}

#[test]
fn a_failing_submission_shows_in_the_log_and_the_server_carries_on() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    s.register("burst", BURST);
    // A reservation that does not exist: sbatch refuses the job.
    s.cli_ok(&[
        "alloc",
        "add",
        "--site",
        "local-slurm",
        "--target",
        "realtime",
        "--reservation",
        "no_such_resv",
    ]);
    s.register(
        "rt",
        "name = \"rt\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"shell\"\non = \"realtime\"\nparams = { argv = [\"true\"] }\n",
    );
    rt().block_on(async {
        let ids = submit(&s.client, "rt", vec![json!({})]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = s.log();
            if log.contains("submission #1 failed") {
                assert!(log.contains("reservation"), "{log}");
                assert!(log.contains("next try in 60s"), "{log}");
                break;
            }
            assert!(Instant::now() < deadline, "no failure logged:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let q = &queues(&s.client).await[0];
        assert_eq!(q.submit_failures, 1);
        assert!(q.next_submit_us.is_some());
        // The server still answers and the run still waits, untouched.
        assert_eq!(detail(&s.client, ids[0]).await.run.state, "queued");
        s.cli_ok(&["alloc", "pause", "1"]);
        assert_eq!(queues(&s.client).await[0].state, "paused");
        let out = s.cli_ok(&["alloc", "list"]);
        assert!(out.contains("paused"), "{out}");
    });
}

/// A shell step on `nodes` nodes of the `mpi` target that lists its ranks:
/// rank, node and job of each.
fn wide_step(name: &str, nodes: u32) -> String {
    format!(
        r#"
[[steps]]
name = "{name}"
action = "shell"
on = "mpi"
timeout = "2m"
resources = {{ cpus = 1, nodes = {nodes} }}
outputs = ["ranks"]
[steps.params]
script = '''
$BEAMFLOW_LAUNCH sh -c 'echo "$SLURM_PROCID $SLURMD_NODENAME $SLURM_JOB_ID"' | sort > ranks.txt
printf '{{"ranks": "%s"}}' "$(paste -sd, ranks.txt)" > "$BEAMFLOW_OUTPUTS"
'''
"#
    )
}

/// Besides the wide steps: a one-node step.
const ONE_NODE: &str = r#"
[[steps]]
name = "one"
action = "shell"
on = "mpi"
after = []
outputs = ["node"]
[steps.params]
script = 'printf "{\"node\": \"%s\"}" "$SLURMD_NODENAME" > "$BEAMFLOW_OUTPUTS"'
"#;

/// The `mpi` target's job holds three nodes in one pilot (`pilot_per =
/// "job"`), which starts steps with `nodes > 1` across them with srun: the
/// other nodes first, its own only for a step that needs every node.
#[test]
fn a_pilot_holding_three_nodes_starts_wide_steps_across_them_with_srun() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    // XPCS multi-tau shared by ranks on two nodes, wired by PMIx.
    let data = s.home.join("data");
    s.cli_ok(&[
        "kernel",
        "xpcs",
        "synthetic",
        "--dir",
        data.to_str().unwrap(),
        "--name",
        "S",
        "--size",
        "64",
        "--frames",
        "200",
    ]);
    let g2 = format!(
        r#"
[[steps]]
name = "g2"
action = "kernel"
kernel = "xpcs.multitau"
on = "mpi"
after = ["three"]
timeout = "2m"
resources = {{ cpus = 1, nodes = 2 }}
[steps.params]
raw = "{raw}"
qmap = "{qmap}"
out = "{{{{ run.dir }}}}/results"
no_plots = true
"#,
        raw = data.join("S/S.h5").display(),
        qmap = data.join("S/S_qmap.hdf").display()
    );
    let flow = format!(
        "name = \"wide\"\nversion = 1\n{}{}{ONE_NODE}{g2}",
        wide_step("two", 2),
        wide_step("three", 3)
    );
    s.register("wide", &flow);
    s.cli_ok(&[
        "alloc",
        "add",
        "--site",
        "local-slurm",
        "--target",
        "mpi",
        "--max-jobs",
        "1",
        "--idle-timeout",
        "5s",
    ]);
    rt().block_on(async {
        let ids = submit(&s.client, "wide", vec![json!({})]).await;
        let d = wait_runs(&s, &ids, 120).await.remove(0);
        assert_eq!(
            d.run.state,
            "succeeded",
            "{:#?}\nlog:\n{}",
            d.attempts,
            s.log()
        );
        let out = |step: &str| {
            let a = d.attempts.iter().find(|a| a.step == step).unwrap();
            a.outputs.as_ref().unwrap().clone()
        };
        let ranks = |step: &str| -> Vec<(String, String, String)> {
            let o = out(step);
            o["ranks"]
                .as_str()
                .unwrap_or_else(|| panic!("{step}: {o}\n{:#?}", d.attempts))
                .split(',')
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f[0].to_string(), f[1].to_string(), f[2].to_string())
                })
                .collect()
        };
        let two = ranks("two");
        let three = ranks("three");
        // One rank per node, each on its own node, all in the pilot's job.
        let nodes = |r: &[(String, String, String)]| -> Vec<String> {
            let mut n: Vec<String> = r.iter().map(|x| x.1.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(
            two.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["0", "1"]
        );
        assert_eq!(
            nodes(&two),
            ["n2", "n3"],
            "the pilot's own node n1 stays free"
        );
        assert_eq!(nodes(&three), ["n1", "n2", "n3"]);
        let job = &two[0].2;
        assert!(two.iter().chain(&three).all(|r| &r.2 == job));
        assert_eq!(
            out("one")["node"],
            "n1",
            "one-node steps run on the pilot's node"
        );
        let g2 = out("g2");
        assert_eq!(
            (g2["ranks"].as_i64(), g2["nodes"].as_i64()),
            (Some(2), Some(2)),
            "{g2}"
        );
        assert_eq!(g2["frames"], 200);
        assert!(Path::new(g2["results"].as_str().unwrap()).is_file(), "{g2}");
    });
}

/// `beamflow doctor --from-compute` sends a pilot job through Slurm and
/// sees its pilot reach the server; with a token the server does not
/// accept, the job's own output says why.
#[test]
fn doctor_from_a_compute_node_reaches_the_server_or_says_why_not() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    // The site's scratch, which the site checks want writable.
    std::fs::create_dir_all("/tmp/beamflow-scratch").unwrap();
    let check = |out: &str| -> Value {
        let checks: Vec<Value> = serde_json::from_str(out).unwrap();
        checks
            .into_iter()
            .find(|c| c["what"] == "from a compute node")
            .unwrap_or_else(|| panic!("no compute-node check in {out}"))
    };
    let args = [
        "--json",
        "doctor",
        "--site",
        "local-slurm",
        "--from-compute",
        "cpu",
        "--wait",
        "60s",
    ];
    let c = check(&s.cli_ok(&args));
    assert_eq!(c["level"], "ok", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("reached https://"),
        "{c}"
    );
    std::fs::write(s.home.join("pilot-token"), "not-the-pilots-token\n").unwrap();
    let o = s.cli(&args);
    assert!(!o.status.success());
    let c = check(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(c["level"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("401"), "{c}");
}

/// A site agent for `far-slurm` (the test cluster under another name), as
/// a facility engineer starts one: its own tokens, the server's
/// certificate, its own job directory; `sbatch` found through `path`.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn agent_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.home.join("far");
        std::fs::create_dir_all(&dir).unwrap();
        let site = std::fs::read_to_string(root().join("site-configs/local-slurm.toml"))
            .unwrap()
            .replace("name = \"local-slurm\"", "name = \"far-slurm\"");
        let site_file = dir.join("far-slurm.toml");
        std::fs::write(&site_file, site).unwrap();
        let token = |name: &str, role: &str, file: &str| {
            let t = self.cli_ok(&["token", "add", name, "--role", role]);
            let p = dir.join(file);
            std::fs::write(&p, t.trim()).unwrap();
            p
        };
        (
            site_file,
            token("far-agent", "agent", "agent-token"),
            token("far-pilots", "pilot", "pilot-token"),
        )
    }

    fn agent(&self, files: &(PathBuf, PathBuf, PathBuf), path: &str, n: u32) -> Agent {
        self.agent_with(files, path, n, &[])
    }

    fn agent_with(
        &self,
        files: &(PathBuf, PathBuf, PathBuf),
        path: &str,
        n: u32,
        extra: &[&str],
    ) -> Agent {
        let log = self.home.join(format!("far/agent-{n}.log"));
        let child = Command::new(BIN)
            .args(["--home", self.home.join("far").to_str().unwrap(), "agent"])
            .arg("--site")
            .arg(&files.0)
            .args(["--server", &self.client.url])
            .arg("--token-file")
            .arg(&files.1)
            .arg("--pilot-token-file")
            .arg(&files.2)
            .arg("--server-cert")
            .arg(self.home.join("tls/cert.pem"))
            .args(extra)
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn sites(&self) -> Vec<beamflow::api::SiteInfo> {
        serde_json::from_str(&self.cli_ok(&["sites", "--json"])).unwrap()
    }

    fn wait_agent(&self, connected: bool, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.sites().iter().any(|s| {
                s.name == "far-slurm" && s.agent.as_ref().is_some_and(|a| a.connected == connected)
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent never {}:\n{}\n{}",
                if connected { "connected" } else { "left" },
                std::fs::read_to_string(log).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn an_agent_runs_a_far_sites_scheduler_and_one_killed_mid_submission_submits_nothing_twice() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    s.register("burst", BURST);
    let files = s.agent_files();
    // An sbatch that submits, then hangs before printing the id while the
    // flag file exists: the agent is killed between submitting and
    // writing the id down.
    let wrap = s.home.join("far/bin");
    std::fs::create_dir_all(&wrap).unwrap();
    let flag = s.home.join("far/hang");
    let sbatch = wrap.join("sbatch");
    std::fs::write(
        &sbatch,
        format!(
            "#!/bin/sh\nout=$(/usr/bin/sbatch \"$@\") || exit $?\nif [ -e {f} ]; then touch {f}.hit; sleep 60; fi\necho \"$out\"\n",
            f = flag.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", wrap.display(), std::env::var("PATH").unwrap());

    // A wrong token is refused with the reason, and the agent exits.
    let bad = s.home.join("far/bad-token");
    std::fs::write(&bad, "x".repeat(64)).unwrap();
    let mut wrong = s.agent(&(files.0.clone(), bad, files.2.clone()), &path, 0);
    let status = wrong.child.wait().unwrap();
    let said = std::fs::read_to_string(&wrong.log).unwrap();
    assert!(
        !status.success() && said.contains("rejected the token"),
        "{said}"
    );

    let agent = s.agent(&files, &path, 1);
    s.wait_agent(true, &agent.log);
    // The client has no far-slurm.toml: the target comes from the agent.
    let out = s.cli_ok(&[
        "alloc",
        "add",
        "--site",
        "far-slurm",
        "--target",
        "cpu",
        "--max-jobs",
        "1",
        "--backlog",
        "1",
        "--idle-timeout",
        "5s",
    ]);
    assert!(out.contains("allocation queue 1"), "{out}");
    let unknown = s.cli(&["alloc", "add", "--site", "nowhere", "--target", "cpu"]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success()
            && err.contains("unknown site `nowhere`")
            && err.contains("far-slurm"),
        "{err}"
    );

    std::fs::write(&flag, "").unwrap();
    rt().block_on(async {
        let ids = submit(&s.client, "burst", vec![json!({ "n": 1 })]).await;
        let hit = PathBuf::from(format!("{}.hit", flag.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !hit.exists() {
            assert!(Instant::now() < deadline, "sbatch never ran:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Killed with the job submitted and its id not yet written down.
        drop(agent);
        std::fs::remove_file(&flag).unwrap();
        s.wait_agent(false, &PathBuf::new());
        let q = &queues(&s.client).await[0];
        assert_eq!(q.state, "offline", "{q:#?}");
        assert!(
            q.paused_reason
                .as_deref()
                .unwrap_or("")
                .contains("far-slurm"),
            "{q:#?}"
        );

        let again = s.agent(&files, &path, 2);
        s.wait_agent(true, &again.log);
        let runs = wait_runs(&s, &ids, 120).await;
        let a = runs[0]
            .attempts
            .iter()
            .find(|a| a.state == "succeeded")
            .unwrap();
        let job = a.outputs.as_ref().unwrap()["job"]
            .as_str()
            .unwrap()
            .to_string();
        let q = &queues(&s.client).await[0];
        let submitted: Vec<&str> = q.jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(submitted, vec![job.as_str()], "{q:#?}");
        // Exactly one job of that name went to the scheduler.
        let named = Command::new("squeue")
            .args(["-h", "-t", "all", "-n", "bf-cpu-1-1", "-o", "%i|%Z"])
            .output()
            .unwrap();
        let dir = s.home.join("far/agent/far-slurm/1/1");
        let ours: Vec<String> = String::from_utf8_lossy(&named.stdout)
            .lines()
            .filter(|l| l.ends_with(dir.to_str().unwrap()))
            .map(|l| l.to_string())
            .collect();
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert!(ours[0].starts_with(&format!("{job}|")), "{ours:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("job-id")).unwrap().trim(),
            job
        );
        let said = std::fs::read_to_string(&again.log).unwrap();
        assert!(said.contains("was submitted before"), "{said}");
        let site = s
            .sites()
            .into_iter()
            .find(|x| x.name == "far-slurm")
            .unwrap();
        assert_eq!(
            (site.run_by.as_str(), site.queues.clone()),
            ("agent", vec![1])
        );
    });
    // The agent's job directories are under the server's home: its drop
    // cancels them.
}

/// A directory holding an `sbatch` that submits its jobs held (`--hold`)
/// while `flag` exists — a job that waits and never starts, as on a queue
/// full of others' work; the PATH that puts it first.
fn holding_sbatch(dir: &Path, flag: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let sbatch = dir.join("sbatch");
    std::fs::write(
        &sbatch,
        format!(
            "#!/bin/sh\nif [ -e {f} ]; then exec /usr/bin/sbatch --hold \"$@\"; fi\nexec /usr/bin/sbatch \"$@\"\n",
            f = flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

impl Server {
    /// A cpu queue at the agent's site `far-slurm`, one job at a time.
    fn add_far_queue(&self, idle_timeout: &str) -> String {
        self.cli_ok(&[
            "alloc",
            "add",
            "--site",
            "far-slurm",
            "--target",
            "cpu",
            "--max-jobs",
            "1",
            "--backlog",
            "1",
            "--idle-timeout",
            idle_timeout,
        ])
    }
}

/// The last `placed` event of a run: where its step went and why.
fn placed(d: &RunDetail) -> String {
    d.events
        .iter()
        .filter(|e| e.kind == "placed")
        .filter_map(|e| e.detail.clone())
        .next_back()
        .unwrap_or_else(|| panic!("no placed event: {:#?}", d.events))
}

/// The pilots that queue `id`'s jobs brought.
fn pilots_of(qs: &[QueueInfo], id: u64) -> Vec<u64> {
    qs.iter()
        .filter(|q| q.id == id)
        .flat_map(|q| q.jobs.iter().flat_map(|j| j.pilots.clone()))
        .collect()
}

/// Two sites serve `cpu`: the server's own (local-slurm), whose job waits
/// held in the scheduler, and far-slurm behind an agent, idle. The step is
/// offered to local-slurm first (nothing measured yet), and once its job
/// has waited longer than the patience (3 s) the far site submits too and
/// gets it; the allocation log and `runs show` say why. The next step goes
/// straight to the far site's warm pilot.
#[test]
fn with_one_sites_job_held_the_work_goes_to_the_idle_site_and_says_why() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let bin = tempfile::tempdir().unwrap();
    let flag = bin.path().join("hold");
    std::fs::write(&flag, "").unwrap();
    let path = holding_sbatch(bin.path(), &flag);
    let s = server_with(
        &root().join("site-configs/local-slurm.toml"),
        &["--alloc-patience", "3s"],
        Some(&path),
    );
    s.register("burst", BURST);
    let files = s.agent_files();
    let agent = s.agent(&files, &std::env::var("PATH").unwrap(), 1);
    s.wait_agent(true, &agent.log);
    s.add_cpu_queue("30s");
    s.add_far_queue("30s");
    rt().block_on(async {
        let ids = submit(&s.client, "burst", vec![json!({ "n": 1 })]).await;
        let runs = wait_runs(&s, &ids, 90).await;
        let d = &runs[0];
        assert_eq!(d.run.state, "succeeded", "{:#?}\n{}", d.attempts, s.log());
        let qs = queues(&s.client).await;
        let held = &qs.iter().find(|q| q.id == 1).unwrap().jobs;
        assert!(
            !held.is_empty() && held.iter().all(|j| j.pilots.is_empty()),
            "local-slurm was offered the work first and its job never started: {qs:#?}"
        );
        let far = pilots_of(&qs, 2);
        let ran = d.attempts.iter().find(|a| a.state == "succeeded").unwrap();
        assert!(
            far.contains(&ran.pilot_id.unwrap()),
            "ran on pilot {:?}, far-slurm's are {far:?}",
            ran.pilot_id
        );
        let log = s.log();
        assert!(
            log.contains("routed to queue 2 at far-slurm")
                && log.contains("queue 1 at local-slurm")
                && log.contains("none started yet"),
            "{log}"
        );
        let why = placed(d);
        assert!(why.starts_with("site far-slurm (pilot "), "{why}");
        let shown = s.cli_ok(&["runs", "show", &ids[0].to_string()]);
        assert!(
            shown.contains("placed") && shown.contains("site far-slurm"),
            "{shown}"
        );

        let more = submit(&s.client, "burst", vec![json!({ "n": 2 })]).await;
        let runs = wait_runs(&s, &more, 30).await;
        let d = &runs[0];
        assert_eq!(d.run.state, "succeeded");
        let ran = d.attempts.iter().find(|a| a.state == "succeeded").unwrap();
        assert!(far.contains(&ran.pilot_id.unwrap()), "{:#?}", d.attempts);
        let why = placed(d);
        assert!(
            why.starts_with("site far-slurm (pilot ") && why.contains("a warm idle pilot"),
            "{why}"
        );
    });
    drop(agent);
}

/// A step running on a preemptable target's pilot at local-slurm when the
/// scheduler kills the job (scancel): the attempt is recorded `preempted`,
/// uses no retry, and the step finishes on far-slurm's pilot, whose
/// placement says the last one was preempted.
#[test]
fn a_preempted_pilots_step_finishes_at_the_other_site_without_a_retry() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("local-slurm.toml");
    let text = std::fs::read_to_string(root().join("site-configs/local-slurm.toml")).unwrap();
    assert!(text.contains("[targets.cpu]\n"));
    std::fs::write(
        &site,
        text.replace("[targets.cpu]\n", "[targets.cpu]\npreemptable = true\n"),
    )
    .unwrap();
    let s = server_with(&site, &["--alloc-patience", "3s"], None);
    s.register(
        "long",
        r#"
name = "long"
version = 1
[[steps]]
name = "work"
action = "shell"
on = "cpu"
timeout = "2m"
[steps.params]
script = 'sleep 6; echo done'
"#,
    );
    let files = s.agent_files();
    let agent = s.agent(&files, &std::env::var("PATH").unwrap(), 1);
    s.wait_agent(true, &agent.log);
    // The queue's target is read from the preemptable config.
    s.cli_ok(&[
        "alloc",
        "add",
        "--site",
        site.to_str().unwrap(),
        "--target",
        "cpu",
        "--max-jobs",
        "1",
        "--backlog",
        "1",
        "--idle-timeout",
        "30s",
    ]);
    rt().block_on(async {
        let ids = submit(&s.client, "long", vec![json!({})]).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            let d = detail(&s.client, ids[0]).await;
            if let Some(a) = d.attempts.iter().find(|a| a.state == "running") {
                break a.pilot_id.unwrap();
            }
            assert!(Instant::now() < deadline, "never running:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Only now may the far site take work.
        s.add_far_queue("30s");
        let qs = queues(&s.client).await;
        let victim = qs[0]
            .jobs
            .iter()
            .find(|j| j.pilots.contains(&first))
            .map(|j| j.job_id.clone())
            .unwrap_or_else(|| panic!("no job of pilot {first}: {qs:#?}"));
        assert!(Command::new("scancel")
            .arg(&victim)
            .status()
            .unwrap()
            .success());
        let runs = wait_runs(&s, &ids, 90).await;
        let d = &runs[0];
        assert_eq!(d.run.state, "succeeded", "{:#?}\n{}", d.attempts, s.log());
        assert_eq!(d.attempts[0].state, "preempted", "{:#?}", d.attempts);
        assert!(
            d.attempts.iter().all(|a| !a.counts_retry),
            "a retry was used: {:#?}",
            d.attempts
        );
        let far = pilots_of(&queues(&s.client).await, 2);
        let ran = d.attempts.iter().find(|a| a.state == "succeeded").unwrap();
        assert!(
            far.contains(&ran.pilot_id.unwrap()),
            "finished on pilot {:?}, far-slurm's are {far:?}",
            ran.pilot_id
        );
        let why = placed(d);
        assert!(
            why.starts_with("site far-slurm (pilot ")
                && why.contains("at local-slurm, was preempted"),
            "{why}"
        );
    });
    drop(agent);
}

const XPCS_FAR: &str = r#"
name = "xpcs-far"
version = 1
[input.raw]
type = "string"
[input.meta]
type = "string"
[input.qmap]
type = "string"
[input.dest]
type = "string"

[[steps]]
name = "multitau"
action = "kernel"
kernel = "xpcs.multitau"
on = "cpu"
timeout = "5m"
[steps.stage]
raw = "beamline:{{ input.raw }}"
meta = "beamline:{{ input.meta }}"
qmap = "beamline:{{ input.qmap }}"
[steps.params]
raw = "{{ staged.raw }}"
meta = "{{ staged.meta }}"
qmap = "{{ staged.qmap }}"
out = "{{ task.dir }}/results"
overwrite = true
no_plots = true

[[steps]]
name = "return"
action = "transfer"
on = "cpu"
after = ["multitau"]
params = { src = "{{ steps.multitau.outputs.results }}", dst = "beamline:{{ input.dest }}/" }
"#;

/// The beamline's data at its own DTN (sshd on loopback, its root the
/// "beamline" directory); the compute at far-slurm behind an agent, whose
/// site config names the beamline as an rsync remote. The XPCS step's
/// inputs are staged into its task directory on the far site's pilot
/// (checked by content), correlated there — the same g2 fits as a
/// correlation of the original files — and the results go back to the
/// beamline byte for byte.
#[test]
fn an_xpcs_run_stages_its_inputs_from_the_beamline_to_the_far_site_and_returns_its_results() {
    use beamflow_kernels::synthetic::xpcs::{write_dataset, SpeckleConfig};
    use beamflow_kernels::xpcs::pipeline::{self, Mode, Options};
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let sshd = beamflow::actions::transfer::loopback::Sshd::start().unwrap();
    let beamline = tempfile::Builder::new()
        .prefix("beamflow-beamline-")
        .tempdir()
        .unwrap();
    let data = beamline.path().join("8idi/2026-3");
    let cfg = SpeckleConfig {
        size: 64,
        frames: 256,
        ..Default::default()
    };
    let files = write_dataset(&cfg, &data, "S01", |_| {}).unwrap();
    let dest = beamline.path().join("8idi/results");

    let s = server();
    s.register("xpcs-far", XPCS_FAR);
    let files_at = s.agent_files();
    // The far site reaches the beamline over SSH.
    let remote = sshd.remote(&[beamline.path()]);
    let mut site = std::fs::read_to_string(&files_at.0).unwrap();
    site.push_str(&format!(
        "\n[transfer.remotes.beamline]\nhost = \"127.0.0.1\"\nport = {}\nidentity = \"{}\"\nknown_hosts = \"{}\"\nroots = [\"{}\"]\n",
        remote.port.unwrap(),
        remote.identity.unwrap(),
        remote.known_hosts.unwrap(),
        beamline.path().display()
    ));
    std::fs::write(&files_at.0, site).unwrap();
    let agent = s.agent(&files_at, &std::env::var("PATH").unwrap(), 1);
    s.wait_agent(true, &agent.log);
    s.add_far_queue("5s");
    rt().block_on(async {
        let ids = submit(
            &s.client,
            "xpcs-far",
            vec![json!({
                "raw": files.raw.display().to_string(),
                "meta": files.metadata.display().to_string(),
                "qmap": files.qmap.display().to_string(),
                "dest": dest.display().to_string(),
            })],
        )
        .await;
        let runs = wait_runs(&s, &ids, 180).await;
        let d = &runs[0];
        assert_eq!(d.run.state, "succeeded", "{:#?}\n{}", d.attempts, s.log());
        let far = pilots_of(&queues(&s.client).await, 1);
        let step = |name: &str| {
            d.attempts
                .iter()
                .find(|a| a.step == name && a.state == "succeeded")
                .unwrap_or_else(|| panic!("{name}: {:#?}", d.attempts))
        };
        let mt = step("multitau");
        assert!(far.contains(&mt.pilot_id.unwrap()), "{mt:#?}");
        let out = mt.outputs.as_ref().unwrap();
        for (name, original) in [
            ("raw", &files.raw),
            ("meta", &files.metadata),
            ("qmap", &files.qmap),
        ] {
            let st = &out["staged"][name];
            assert_eq!(
                (st["backend"].as_str(), st["remote"].as_str()),
                (Some("rsync"), Some("beamline")),
                "{st}"
            );
            let local = PathBuf::from(st["path"].as_str().unwrap());
            assert!(local.starts_with(&d.run.dir), "{}", local.display());
            assert_eq!(
                blake3::hash(&std::fs::read(&local).unwrap()),
                blake3::hash(&std::fs::read(original).unwrap()),
                "{name} arrived changed"
            );
            assert_eq!(
                st["bytes"].as_u64(),
                Some(std::fs::metadata(original).unwrap().len())
            );
        }
        // The same fits as correlating the beamline's own files.
        let here = tempfile::tempdir().unwrap();
        let mut opts = Options::new(&files.raw, &files.qmap, here.path(), Mode::Multitau);
        opts.meta = Some(files.metadata.clone());
        opts.plots = false;
        let want = pipeline::run(&opts, &mut |_| true).unwrap().summary;
        let gamma: Vec<f64> = serde_json::from_value(out["gamma"].clone()).unwrap();
        let expect: Vec<f64> = want.fits.iter().map(|f| f.gamma).collect();
        assert_eq!(gamma.len(), expect.len());
        for (g, e) in gamma.iter().zip(&expect) {
            assert!((g - e).abs() <= 1e-9 * e.abs(), "gamma {g} vs {e}");
        }
        // The results came back to the beamline, byte for byte.
        let results = PathBuf::from(out["results"].as_str().unwrap());
        let back = dest.join(results.file_name().unwrap());
        assert_eq!(
            blake3::hash(&std::fs::read(&back).unwrap()),
            blake3::hash(&std::fs::read(&results).unwrap()),
        );
        let ret = step("return").outputs.as_ref().unwrap();
        assert_eq!(
            (ret["backend"].as_str(), ret["direction"].as_str()),
            (Some("rsync"), Some("push"))
        );
        // The timing table sums the moves by site pair.
        let shown: Value =
            serde_json::from_str(&s.cli_ok(&["--json", "runs", "show", &ids[0].to_string()]))
                .unwrap();
        let moved = &shown["timing"]["moved"];
        let staged_bytes: u64 = [&files.raw, &files.metadata, &files.qmap]
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(
            (
                &moved[0]["from"],
                &moved[0]["to"],
                &moved[0]["moves"],
                &moved[0]["bytes"]
            ),
            (
                &json!("beamline"),
                &json!("far-slurm"),
                &json!(3),
                &json!(staged_bytes)
            ),
            "{moved}"
        );
        assert_eq!(
            (&moved[1]["from"], &moved[1]["to"], &moved[1]["moves"]),
            (&json!("far-slurm"), &json!("beamline"), &json!(1)),
            "{moved}"
        );
        let text = s.cli_ok(&["runs", "show", &ids[0].to_string()]);
        assert!(
            text.contains("moved from") && text.contains("beamline"),
            "{text}"
        );
    });
    drop(agent);
}

/// Compute nodes that cannot reach the server reach it through the agent:
/// with `--relay`, the far site's job scripts point their pilots at the
/// agent's relay, and the run completes over it.
#[test]
fn pilots_at_an_agents_site_reach_the_server_through_its_relay() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    s.register("burst", BURST);
    let files = s.agent_files();
    let relay = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = s.agent_with(
        &files,
        &std::env::var("PATH").unwrap(),
        1,
        &["--relay", &relay.to_string()],
    );
    s.wait_agent(true, &agent.log);
    s.add_far_queue("3s");
    rt().block_on(async {
        let ids = submit(&s.client, "burst", vec![json!({ "n": 1 })]).await;
        let runs = wait_runs(&s, &ids, 90).await;
        assert_eq!(
            runs[0].run.state,
            "succeeded",
            "{:#?}\n{}",
            runs[0].attempts,
            s.log()
        );
    });
    // The pilot was told the relay's address, not the server's.
    let dir = s.home.join("far/agent/far-slurm/1/1");
    let script = std::fs::read_to_string(dir.join("job.sh")).unwrap();
    let url = format!("--url https://{relay} ");
    assert!(script.contains(&url), "{url} not in\n{script}");
    assert!(!script.contains(&format!("--url {} ", s.client.url)));
    drop(agent);
}
