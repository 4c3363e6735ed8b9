//! Pilots coming and going: killed, idle, near their walltime, silent.

use super::*;

#[test]
fn killed_pilot_tasks_finish_on_the_other_without_spending_retries() {
    let env = Env::new();
    let (_server, c) = env.server(
        "127.0.0.1:0",
        &["--pilot-timeout", "2s", "--heartbeat", "0.5s"],
    );
    let mut victim = env.pilot("victim", 2);
    let flow = env.fixture("slow");
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        let ids = c.submit("slow", None, vec![json!({}); 4]).await.unwrap();
        // Wait until the victim runs something, then kill it outright.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = detail(&c, ids[0]).await;
            if d.attempts.iter().any(|a| a.state == "running") {
                break;
            }
            assert!(Instant::now() < deadline, "nothing started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        victim.kill9();
        let _rescuer = env.pilot("rescuer", 2);
        let runs = c
            .wait(&ids, false, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(runs.iter().all(|r| r.state == "succeeded"), "{runs:?}");
        let mut lost = 0;
        for id in &ids {
            let d = detail(&c, *id).await;
            lost += d.attempts.iter().filter(|a| a.state == "lost").count();
            assert!(
                d.attempts.iter().all(|a| !a.counts_retry),
                "a lost pilot must not cost a retry"
            );
            let last = d.attempts.last().unwrap();
            assert_eq!(last.state, "succeeded");
        }
        assert!(
            lost >= 1,
            "the killed pilot held attempts; they must be recorded as lost"
        );
    });
}

fn exit_within(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = p.0.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn an_idle_pilot_leaves_and_says_so() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let mut p = env.pilot_with("idle", 1, &["--idle-timeout", "1s"]);
    let st = exit_within(&mut p, Duration::from_secs(15)).expect("the idle pilot did not exit");
    assert!(st.success());
    rt().block_on(async {
        let pilots: Vec<Value> = c.get("/api/pilots").await.unwrap();
        assert_eq!(pilots[0]["state"], "left");
        assert!(pilots[0]["reason"]
            .as_str()
            .unwrap()
            .contains("idle for 1s"));
    });
}

#[test]
fn a_pilot_near_its_walltime_takes_no_long_task_then_drains_and_leaves() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    // 6 s of walltime: a step that may take a minute must not be placed here.
    let mut short = env.pilot_with(
        "short",
        2,
        &[
            "--idle-timeout",
            "0s",
            "--walltime",
            "6s",
            "--drain-margin",
            "3s",
        ],
    );
    let flow = env.fixture("long");
    rt().block_on(async {
        let d = start_one(&c, &flow).await;
        let id = d.run.id;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let d = detail(&c, id).await;
        assert_eq!(
            d.attempts[0].state, "ready",
            "placed on a pilot without enough walltime left"
        );
        let _long = env.pilot("long", 2);
        let runs = c
            .wait(&[id], false, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "succeeded");
        let d = detail(&c, id).await;
        let pilots: Vec<Value> = c.get("/api/pilots").await.unwrap();
        let long_id = pilots.iter().find(|p| p["name"] == "long").unwrap()["id"].as_u64();
        assert_eq!(d.attempts[0].pilot_id, long_id);
    });
    let st = exit_within(&mut short, Duration::from_secs(15))
        .expect("the pilot did not leave at its walltime");
    assert!(st.success());
    rt().block_on(async {
        let pilots: Vec<Value> = c.get("/api/pilots").await.unwrap();
        let p = pilots.iter().find(|p| p["name"] == "short").unwrap();
        assert_eq!(p["state"], "left", "{p}");
        assert!(p["reason"].as_str().unwrap().contains("walltime"), "{p}");
    });
}

#[test]
fn a_silent_pilot_is_declared_lost_and_its_task_runs_elsewhere() {
    let env = Env::new();
    let (_server, c) = env.server(
        "127.0.0.1:0",
        &["--pilot-timeout", "2s", "--heartbeat", "0.3s"],
    );
    let frozen = env.pilot("frozen", 1);
    let flow = env.fixture("mark");
    rt().block_on(async {
        let d = start_one(&c, &flow).await;
        let id = d.run.id;
        wait_pid(&PathBuf::from(&d.run.dir).join("steps/work/attempt-1/pid")).await;
        // The connection stays open but the pilot says nothing: only the heartbeat can tell.
        let pid = frozen.0.id() as i32;
        // SAFETY: signals to our own child process.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let _other = env.pilot("other", 1);
        // Its shell step keeps running (own process group); once the server
        // has given up on the pilot, wake the pilot while that step still runs.
        wait_first_attempt(&c, id, "lost").await;
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let runs = c
            .wait(&[id], false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "succeeded");
        let d = detail(&c, id).await;
        assert_eq!(d.attempts.len(), 2);
        assert_eq!(d.attempts[0].state, "lost");
        assert!(
            d.attempts[0]
                .error
                .as_deref()
                .unwrap()
                .contains("heartbeat timed out"),
            "{:?}",
            d.attempts[0].error
        );
        assert!(!d.attempts[0].counts_retry);
        assert_eq!(d.attempts[1].state, "succeeded");
        // Woken up, the stale pilot learns it was declared lost, stops the old
        // attempt and registers afresh: the step's output is written once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = std::fs::read_to_string(PathBuf::from(&d.run.dir).join("done")).unwrap();
        assert_eq!(
            done.lines().collect::<Vec<_>>(),
            vec!["2"],
            "the lost attempt must not finish"
        );
        let pilots: Vec<Value> = c.get("/api/pilots").await.unwrap();
        let states: Vec<(&str, &str)> = pilots
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
            .collect();
        assert!(states.contains(&("frozen", "lost")), "{states:?}");
        assert!(
            states
                .iter()
                .filter(|(n, s)| *n == "frozen" && *s == "connected")
                .count()
                == 1,
            "{states:?}"
        );
    });
}
