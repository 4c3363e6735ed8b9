//! File triggers: `beamflow watch`, a flow's `[[trigger]]` tables run by the server, follow-up flows, restarts.

use super::*;

/// Starts `beamflow watch DIR` for the `ingest` flow, 10 files a run at
/// most (a partial batch after 300 ms), with `extra` flags.
fn watcher(env: &Env, dir: &Path, flow: &Path, extra: &[&str]) -> Proc {
    Proc(
        Command::new(bin())
            .args(["--home", env.home.to_str().unwrap(), "watch"])
            .arg(dir)
            .args([
                "--flow",
                flow.to_str().unwrap(),
                "--pattern",
                "*.h5",
                "--settle",
                "300ms",
            ])
            .args(["--batch", "10", "--flush-after", "300ms"])
            .args(extra)
            .stdout(env.log("watch-out"))
            .stderr(env.log("watch-err"))
            .spawn()
            .unwrap(),
    )
}

/// Every file named by the runs of `ingest`, with how often, and the
/// earliest creation time of a run naming each.
async fn ingested(c: &Client) -> std::collections::BTreeMap<String, (usize, i64)> {
    let runs: Vec<beamflow::store::RunRow> =
        c.get("/api/runs?flow=ingest&limit=100000").await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for r in runs {
        for f in r.input["files"].as_array().unwrap() {
            let name = Path::new(f.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let e = seen.entry(name).or_insert((0, i64::MAX));
            e.0 += 1;
            e.1 = e.1.min(r.created_us);
        }
    }
    seen
}

async fn wait_ingested(c: &Client, n: usize) -> std::collections::BTreeMap<String, (usize, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ingested(c).await;
        if s.len() >= n {
            // Anything fired twice would show up by now too.
            tokio::time::sleep(Duration::from_millis(700)).await;
            return ingested(c).await;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} files ingested",
            s.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// With inotify and with a polling scan: a slow writer (pauses shorter
/// than the settle time between writes, longer under inotify while the
/// file is open) fires once, after its last write; a file written under a
/// temporary name fires once under its final name; other names never; a
/// burst of 1,000 files fires each exactly once, in batches of 10, even
/// with the watcher killed (SIGKILL) in the middle and started again; a
/// file already ingested is not ingested again after the restart.
#[test]
fn watch_fires_once_per_complete_file_across_a_restart() {
    for mode in [&[][..], &["--poll", "100ms"][..]] {
        let env = Env::new();
        let (_server, c) = env.server("127.0.0.1:0", &[]);
        let _pilot = env.pilot("a", 2);
        let flow = env.fixture("ingest");
        let dir = env.home.join("detector");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = watcher(&env, &dir, &flow, mode);
        rt().block_on(async {
            wait_pilots(&c, 1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A slow writer: five chunks 150 ms apart (inotify: and a
            // 600 ms pause with the file open).
            let slow = dir.join("slow.h5");
            let mut f = std::fs::File::create(&slow).unwrap();
            for k in 0..5 {
                use std::io::Write;
                f.write_all(&[k; 4096]).unwrap();
                f.flush().unwrap();
                let pause = if mode.is_empty() && k == 2 { 600 } else { 150 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            drop(f);
            let written = now_us();
            // Write-then-rename, and names the pattern leaves out.
            std::fs::write(dir.join(".partial"), b"frame").unwrap();
            std::fs::rename(dir.join(".partial"), dir.join("renamed.h5")).unwrap();
            std::fs::write(dir.join("notes.txt"), b"not a frame").unwrap();
            let s = wait_ingested(&c, 2).await;
            assert_eq!(
                s.keys().collect::<Vec<_>>(),
                ["renamed.h5", "slow.h5"],
                "{s:?}"
            );
            assert!(s.values().all(|v| v.0 == 1), "{s:?}");
            assert!(
                s["slow.h5"].1 >= written,
                "slow.h5 fired before its last write"
            );
            // A burst of 1,000; the watcher is killed after ~400 and restarted.
            for i in 0..1000 {
                std::fs::write(dir.join(format!("burst_{i:04}.h5")), [i as u8; 512]).unwrap();
                if i == 400 {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while ingested(&c).await.len() < 100 {
                        assert!(Instant::now() < deadline, "nothing fired from the burst");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    w.kill9();
                }
            }
            let _w2 = watcher(&env, &dir, &flow, mode);
            let s = wait_ingested(&c, 1002).await;
            assert_eq!(s.len(), 1002, "{mode:?}");
            let twice: Vec<_> = s.iter().filter(|(_, v)| v.0 != 1).collect();
            assert!(
                twice.is_empty(),
                "{mode:?}: fired more than once: {twice:?}"
            );
            // Batches of at most 10.
            let runs: Vec<beamflow::store::RunRow> =
                c.get("/api/runs?flow=ingest&limit=100000").await.unwrap();
            assert!(runs
                .iter()
                .all(|r| r.input["files"].as_array().unwrap().len() <= 10));
            assert!(runs.len() >= 101, "{} runs", runs.len());
        });
    }
}

/// A flow's `[[trigger]]` table runs in the server: files closed in its
/// directory start runs with the templated input (typed by the flow's
/// schema); a restarted server picks the trigger up again from the store
/// and neither repeats nor misses a file (one written while it was down
/// is started after); a new version of the flow replaces the trigger.
#[test]
fn the_server_runs_a_flows_trigger_table_across_restarts() {
    let env = Env::new();
    let dir = env.home.join("detector");
    std::fs::create_dir_all(&dir).unwrap();
    let src = |version: u32, pattern: &str| {
        format!(
            r#"
name = "ingest"
version = {version}
[input.frame]
type = "path"
[input.count]
type = "int"
[[trigger]]
dir = "{}"
pattern = "{pattern}"
settle = "200ms"
input = {{ frame = "{{{{ file }}}}", count = "{{{{ count }}}}" }}
[[steps]]
name = "a"
action = "kernel"
kernel = "noop"
"#,
            dir.display()
        )
    };
    let v1 = env.flow("ingest-v1", &src(1, "*.h5"));
    let bind = free_bind();
    let frames = |c: &Client| {
        let c = c.clone();
        async move {
            let runs: Vec<beamflow::store::RunRow> =
                c.get("/api/runs?flow=ingest&limit=1000").await.unwrap();
            let mut v: Vec<(String, i64)> = runs
                .iter()
                .map(|r| {
                    let f = r.input["frame"].as_str().unwrap();
                    (
                        Path::new(f)
                            .file_name()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                        r.input["count"].as_i64().unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        }
    };
    let wait_for = |c: &Client, n: usize| {
        let c = c.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let v = frames(&c).await;
                if v.len() >= n {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    return frames(&c).await;
                }
                assert!(Instant::now() < deadline, "{} of {n} runs: {v:?}", v.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    {
        let (_server, c) = env.server(&bind, &[]);
        let _pilot = env.pilot("a", 1);
        env.beamflow_ok(&["flow", "register", v1.to_str().unwrap()]);
        rt().block_on(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(dir.join("a.h5"), b"1").unwrap();
            std::fs::write(dir.join("b.h5"), b"2").unwrap();
            std::fs::write(dir.join("b.txt"), b"no").unwrap();
            let v = wait_for(&c, 2).await;
            assert_eq!(v, [("a.h5".to_string(), 1), ("b.h5".to_string(), 1)]);
        });
    }
    // Written while the server is down.
    std::fs::write(dir.join("c.h5"), b"3").unwrap();
    let (_server, c) = env.server(&bind, &[]);
    let _pilot = env.pilot("b", 1);
    rt().block_on(async {
        let v = wait_for(&c, 3).await;
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v[2].0, "c.h5");
        // Version 2 watches *.dat instead.
        let v2 = env.flow("ingest-v2", &src(2, "*.dat"));
        env.beamflow_ok(&["flow", "register", v2.to_str().unwrap()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(dir.join("d.h5"), b"4").unwrap();
        std::fs::write(dir.join("e.dat"), b"5").unwrap();
        let v = wait_for(&c, 4).await;
        let names: Vec<&str> = v.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["a.h5", "b.h5", "c.h5", "e.dat"]);
    });
}

/// SSX-Prime's pattern: every run of the trigger's flow reports hits; each
/// time the runs since the last follow-up add up to 300 hits, one run of
/// the follow-up flow starts with those runs and their total.
#[test]
fn a_follow_up_flow_starts_when_the_runs_add_up() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _pilot = env.pilot("a", 2);
    let hits = env.fixture("hits");
    let prime = env.fixture("prime");
    let dir = env.home.join("ssx");
    std::fs::create_dir_all(&dir).unwrap();
    let _w = Proc(
        Command::new(bin())
            .args(["--home", env.home.to_str().unwrap(), "watch"])
            .arg(&dir)
            .args([
                "--flow",
                hits.to_str().unwrap(),
                "--pattern",
                "*.cbf",
                "--settle",
                "200ms",
            ])
            .args([
                "--then",
                prime.to_str().unwrap(),
                "--when",
                "steps.count.outputs.hits >= 300",
            ])
            .args([
                "--then-input-template",
                r#"{"runs": {{ runs | tojson }}, "total": {{ total }}}"#,
            ])
            .stdout(env.log("watch-out"))
            .stderr(env.log("watch-err"))
            .spawn()
            .unwrap(),
    );
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..7 {
            std::fs::write(dir.join(format!("img_{i}.cbf")), [i; 64]).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let primes = loop {
            let p: Vec<beamflow::store::RunRow> = c.get("/api/runs?flow=prime").await.unwrap();
            if p.len() >= 2 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                break c
                    .get::<Vec<beamflow::store::RunRow>>("/api/runs?flow=prime")
                    .await
                    .unwrap();
            }
            assert!(Instant::now() < deadline, "{} follow-ups", p.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // 700 hits: two follow-ups of 300, 100 left over.
        assert_eq!(primes.len(), 2, "{primes:?}");
        let mut covered = Vec::new();
        for p in &primes {
            assert_eq!(p.input["total"], json!(300.0));
            let runs = p.input["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 3);
            covered.extend(runs.iter().map(|r| r.as_u64().unwrap()));
        }
        covered.sort();
        covered.dedup();
        assert_eq!(covered.len(), 6);
        let all: Vec<beamflow::store::RunRow> = c.get("/api/runs?flow=hits").await.unwrap();
        assert_eq!(all.len(), 7);
        assert!(covered.iter().all(|id| all.iter().any(|r| r.id == *id)));
    });
}

/// A trigger outlives a server restart: a file completed while the server
/// is down stays recorded and starts its run once the server answers; the
/// trigger neither exits nor repeats the file seen before.
#[test]
fn a_trigger_waits_out_a_server_restart() {
    let env = Env::new();
    let bind = free_bind();
    let flow = env.fixture("ingest");
    let dir = env.home.join("detector");
    std::fs::create_dir_all(&dir).unwrap();
    let (server, c) = env.server(&bind, &[]);
    let mut w = watcher(&env, &dir, &flow, &[]);
    rt().block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(dir.join("a.h5"), b"1").unwrap();
        wait_ingested(&c, 1).await;
    });
    drop(server);
    std::fs::write(dir.join("b.h5"), b"2").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "the trigger exited with the server down"
    );
    let (_server, c) = env.server(&bind, &[]);
    rt().block_on(async {
        let s = wait_ingested(&c, 2).await;
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a.h5", "b.h5"]);
        assert!(s.values().all(|v| v.0 == 1), "{s:?}");
    });
    let err = std::fs::read_to_string(env.home.join("watch-err.log")).unwrap();
    assert!(
        err.contains("warning: cannot reach the beamflow server"),
        "{err}"
    );
}
