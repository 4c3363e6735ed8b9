//! Runs end to end: a burst of runs, a server killed mid-burst, cancelling, retries, `when` and timeouts, the CLI's validate, demo and `run --local`.

use super::*;

#[test]
fn two_hundred_runs_of_a_four_step_flow_all_succeed() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _p1 = env.pilot("a", 2);
    let _p2 = env.pilot("b", 2);
    let flow = env.fixture("four");
    rt().block_on(async {
        wait_pilots(&c, 2).await;
        c.register(&flow).await.unwrap();
        let inputs: Vec<Value> = (0..200).map(|n| json!({ "n": n })).collect();
        let ids = c.submit("four", None, inputs).await.unwrap();
        assert_eq!(ids.len(), 200);
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(240)))
            .await
            .unwrap();
        let bad: Vec<_> = runs.iter().filter(|r| r.state != "succeeded").collect();
        assert!(bad.is_empty(), "runs not succeeded: {bad:?}");
        for r in &runs {
            let dir = Path::new(&r.dir);
            assert_eq!(lines(&dir.join("make.count")), 1, "run {}", r.id);
            assert_eq!(lines(&dir.join("check.count")), 1, "run {}", r.id);
        }
        // Each run published exactly one record carrying its own computed value.
        let recs: Vec<Value> = c.get("/api/catalog?limit=1000").await.unwrap();
        assert_eq!(recs.len(), 200);
        let hit: Vec<Value> = c.get("/api/catalog?field=fields.n=17").await.unwrap();
        assert_eq!(hit.len(), 1);
        assert_eq!(hit[0]["record"]["outputs"]["value"], json!(34));
        assert_eq!(hit[0]["record"]["input"]["n"], json!(17));
        // The timing table's facts are recorded for every step.
        let d = detail(&c, ids[0]).await;
        assert_eq!(d.attempts.len(), 4);
        for a in &d.attempts {
            assert!(a.ready_us.unwrap() <= a.dispatched_us.unwrap());
            assert!(a.started_us.unwrap() <= a.finished_us.unwrap());
            assert!(a.finished_us.unwrap() <= a.recorded_us.unwrap());
        }
    });
    // The report over the 200: every step in every run, the shell steps
    // taking measurable time, several runs at once on 2 × 2 cores, the
    // figures written as PNG.
    let pngs = env.home.join("report");
    let out = env.beamflow_ok(&[
        "--json",
        "report",
        "--flow",
        "four",
        "-o",
        pngs.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let rep = &r["report"];
    assert_eq!(rep["succeeded"], 200);
    let steps: Vec<&str> = rep["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["make", "think", "check", "publish"]);
    for s in rep["steps"].as_array().unwrap() {
        assert_eq!(s["runs"], 200);
        let q = &s["runtime_s"];
        assert!(
            q["q1"].as_f64() <= q["median"].as_f64() && q["median"].as_f64() <= q["q3"].as_f64(),
            "{s}"
        );
    }
    assert!(
        rep["steps"][0]["runtime_s"]["median"].as_f64().unwrap() > 1e-4,
        "{rep}"
    );
    assert!(rep["max_concurrent"].as_u64().unwrap() >= 2, "{rep}");
    for p in r["plots"].as_array().unwrap() {
        let bytes = std::fs::read(p.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{p}");
    }
    let o = Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .args([
            "report",
            "--flow",
            "four",
            "--since",
            "2999-01-01T00:00:00Z",
            "--no-plots",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no succeeded runs"));
    // A flow that does not exist is named as such.
    let o = Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .args(["report", "--flow", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("flow `nosuch` is not registered"), "{err}");
    // Without -o the figures go under the home, not the current directory.
    let here = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .env("BEAMFLOW_HOME", &env.home)
        .current_dir(here.path())
        .args(["report", "--flow", "four"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(here.path()).unwrap().count(), 0);
    assert!(env.home.join("reports/four/four_concurrency.png").is_file());
}

#[test]
fn server_killed_mid_burst_restarts_and_runs_everything_exactly_once() {
    let env = Env::new();
    let bind = free_bind();
    let (mut server, c) = env.server(&bind, &[]);
    let _p1 = env.pilot("a", 2);
    let _p2 = env.pilot("b", 2);
    let flow = env.fixture("count");
    let rt = rt();
    let ids = rt.block_on(async {
        wait_pilots(&c, 2).await;
        c.register(&flow).await.unwrap();
        let ids = c.submit("count", None, vec![json!({}); 120]).await.unwrap();
        // Let part of the burst finish, then pull the plug.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: Vec<Value> = c.get("/api/runs?state=succeeded&limit=1000").await.unwrap();
            if done.len() >= 10 {
                break;
            }
            assert!(Instant::now() < deadline, "nothing finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    });
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let (_server2, c2) = env.server(&bind, &[]);
    rt.block_on(async {
        let runs = c2
            .wait(&ids, false, Some(Duration::from_secs(120)))
            .await
            .unwrap();
        assert_eq!(runs.len(), 120);
        assert!(
            runs.iter().all(|r| r.state == "succeeded"),
            "{:?}",
            runs.iter()
                .filter(|r| r.state != "succeeded")
                .collect::<Vec<_>>()
        );
        for r in &runs {
            let dir = Path::new(&r.dir);
            assert_eq!(
                lines(&dir.join("one")),
                1,
                "run {}: step one ran {} times",
                r.id,
                lines(&dir.join("one"))
            );
            assert_eq!(
                lines(&dir.join("two")),
                1,
                "run {}: step two ran {} times",
                r.id,
                lines(&dir.join("two"))
            );
        }
    });
}

#[test]
fn cancel_kills_the_running_shell_step_and_its_children() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _p = env.pilot("a", 2);
    let flow = env.fixture("hang");
    rt().block_on(async {
        let d = start_one(&c, &flow).await;
        let id = d.run.id;
        let task_dir = PathBuf::from(&d.run.dir).join("steps/hang/attempt-1");
        // The script writes shell.pid before it starts the child.
        let child = wait_pid(&task_dir.join("child.pid")).await;
        let shell = wait_pid(&task_dir.join("shell.pid")).await;
        assert!(alive(shell) && alive(child));
        let _: Value = c
            .post(&format!("/api/runs/{id}/cancel"), &json!({}))
            .await
            .unwrap();
        let runs = c
            .wait(&[id], false, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "cancelled");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(shell) || alive(child) {
            assert!(
                Instant::now() < deadline,
                "cancelled processes still alive: shell {} child {}",
                alive(shell),
                alive(child)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The pilot reports the attempt as cancelled.
        wait_first_attempt(&c, id, "cancelled").await;
        // A second cancel is refused clearly.
        let err = c
            .post::<Value, _>(&format!("/api/runs/{id}/cancel"), &json!({}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already cancelled"), "{err}");
    });
}

#[test]
fn failing_step_retries_then_fails_the_run_and_retry_resumes_it() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _p = env.pilot("a", 2);
    let flow = env.fixture("flaky");
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let gate = env.home.join("gate-open");
        let id = c
            .submit("flaky", None, vec![json!({ "gate": gate })])
            .await
            .unwrap()[0];
        let runs = c
            .wait(&[id], false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "failed");
        let err = runs[0].error.clone().unwrap();
        assert!(
            err.contains("step `gate` failed after 3 tries: exit code 3"),
            "{err}"
        );
        assert!(err.contains("gate closed"), "{err}");
        let dir = PathBuf::from(&runs[0].dir);
        assert_eq!(lines(&dir.join("gate")), 3);
        // The two back-offs (0.1 s, 0.2 s) are counted as backoff, the
        // failed tries as retried, neither as the engine's overhead.
        let t = beamflow::report::timing(&detail(&c, id).await);
        let g = t.steps.iter().find(|s| s.step == "gate").unwrap();
        assert_eq!(g.tries, 3);
        assert!((0.29..5.0).contains(&g.backoff_s), "{g:?}");
        assert!(g.retried_s > 0.0 && g.overhead_s < g.backoff_s, "{g:?}");
        let parts = g.queued_s + g.backoff_s + g.retried_s + g.action_s + g.overhead_s;
        assert!((parts - g.total_s).abs() < 1e-6, "{g:?}");
        assert!(
            t.backoff_s >= g.backoff_s && t.overhead_s < t.total_s,
            "{t:?}"
        );
        // Open the gate and retry: only the failed step runs again.
        std::fs::write(&gate, "").unwrap();
        let _: Value = c
            .post(&format!("/api/runs/{id}/retry"), &json!({}))
            .await
            .unwrap();
        let runs = c
            .wait(&[id], false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "succeeded");
        assert_eq!(lines(&dir.join("first")), 1);
        assert_eq!(lines(&dir.join("gate")), 4);
    });
}

#[test]
fn when_skips_a_step_and_a_timeout_fails_one() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _p = env.pilot("a", 2);
    let flow = env.fixture("cond");
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let ids = c
            .submit(
                "cond",
                None,
                vec![
                    json!({"go": false}),
                    json!({"go": "true"}),
                    json!({"go": false, "hang": 30}),
                ],
            )
            .await
            .unwrap();
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        let dir = |i: usize| PathBuf::from(&runs[i].dir);
        // Skipped: the next step still runs.
        assert_eq!(runs[0].state, "succeeded");
        assert!(!dir(0).join("maybe.out").exists());
        assert!(dir(0).join("after.out").exists());
        assert_eq!(detail(&c, ids[0]).await.attempts[0].state, "skipped");
        assert_eq!(runs[1].state, "succeeded");
        assert!(dir(1).join("maybe.out").exists());
        // Timed out: the step fails with a clear error, long before 30 s.
        assert_eq!(runs[2].state, "failed");
        let err = runs[2].error.clone().unwrap();
        assert!(
            err.contains("step `after` failed after 1 try: timed out after 1.00 s"),
            "{err}"
        );
        // A bad input type is refused before any run is created.
        let err = c
            .submit("cond", None, vec![json!({"go": "perhaps"})])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("input `go`: expected bool"), "{err}");
    });
}

#[test]
fn cli_validate_demo_and_local_run() {
    let env = Env::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bf = |args: &[&str]| {
        Command::new(bin())
            .env("BEAMFLOW_HOME", &env.home)
            .args(args)
            .output()
            .unwrap()
    };
    let out = bf(&[
        "flow",
        "validate",
        root.join("jobs/demo.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = bf(&[
        "flow",
        "validate",
        root.join("jobs/xpcs.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bf(&[
        "flow",
        "validate",
        root.join("tests/flows/bad/cycle.toml").to_str().unwrap(),
    ]);
    // An invalid file exits 2, as `site validate`, `register` and `run` do.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cycle.toml:7: steps.a.after: cycle: a -> b -> a"),
        "{err}"
    );

    let out = bf(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("run 1 succeeded"), "{text}");
    assert!(
        text.contains("catalog record 1: XPCS silica-demo: 2000 frames"),
        "{text}"
    );
    assert!(text.contains("D fitted"), "{text}");
    assert!(
        text.contains("the results came back to the beamline"),
        "{text}"
    );
    // The Γ table: a row per q bin the kernel resolved; where the true
    // decay spans at least two frames (1 ms apart in the demo), the fit is
    // within 5 % of the truth.
    let rows = gamma_rows(&text);
    assert!(rows.len() >= 15, "{} rows of Γ:\n{text}", rows.len());
    let mut checked = 0;
    for (q, fitted, truth) in &rows {
        if 1.0 / (2.0 * truth * 1e-3) < 2.0 {
            continue;
        }
        let off = (fitted - truth).abs() / truth;
        assert!(
            off < 0.05,
            "q {q}: Γ fitted {fitted}, true {truth}:\n{text}"
        );
        checked += 1;
    }
    assert!(
        checked >= 15,
        "{checked} bins decay over two frames or more:\n{text}"
    );
    // The timing table and the Γ table keep their columns.
    super::shapes::check_columns("demo", &text);

    let data = env.home.join("frames");
    beamflow::cli::demo::generate_frames(&data, 3, 1000).unwrap();
    let out = bf(&[
        "--json",
        "run",
        "--local",
        root.join("jobs/demo.toml").to_str().unwrap(),
        "--set",
        &format!("src={}", data.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["state"], "succeeded");
    assert_eq!(v["timing"]["steps"].as_array().unwrap().len(), 3);
    let summary = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["step"] == "summarise")
        .unwrap();
    assert_eq!(summary["outputs"]["files"], json!(3));
    assert_eq!(summary["outputs"]["bytes"], json!(3000));

    // Without a server, client commands say what is wrong and exit non-zero.
    let out = bf(&["runs", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server found"));
}

#[test]
fn cancel_during_a_server_restart_still_stops_the_step() {
    let env = Env::new();
    let bind = free_bind();
    let (mut server, c) = env.server(&bind, &[]);
    let _p = env.pilot("a", 2);
    let flow = env.fixture("hang-child");
    let rt = rt();
    let (id, child) = rt.block_on(async {
        let d = start_one(&c, &flow).await;
        let id = d.run.id;
        let pid_file = PathBuf::from(&d.run.dir).join("steps/hang/attempt-1/child.pid");
        (id, wait_pid(&pid_file).await)
    });
    server.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let (_server2, c2) = env.server(&bind, &[]);
    rt.block_on(async {
        // The pilot may or may not have reconnected yet: either way the step must stop.
        let _: Value = c2
            .post(&format!("/api/runs/{id}/cancel"), &json!({}))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(child) {
            assert!(
                Instant::now() < deadline,
                "the cancelled step still runs after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let d = wait_first_attempt(&c2, id, "cancelled").await;
        assert_eq!(d.run.state, "cancelled");
    });
}

/// (q, Γ fitted, Γ true) of each row of the demo's Γ table.
fn gamma_rows(text: &str) -> Vec<(f64, f64, f64)> {
    let mut rows = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.contains("Γ fitted (1/s)") {
            inside = true;
        } else if inside && l.starts_with('└') {
            break;
        } else if inside && l.starts_with('│') {
            let cells: Vec<f64> = l
                .trim_matches('│')
                .split('┆')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            if let [q, fitted, truth, _beta] = cells[..] {
                rows.push((q, fitted, truth));
            }
        }
    }
    rows
}
