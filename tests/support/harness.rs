//! The processes end-to-end tests start: a `beamflow server` and `beamflow
//! pilot`s from the built binary, in a temporary home, killed when dropped.
//!
//! With `BEAMFLOW_TEST_STORE=postgres` every server keeps its store in a
//! fresh database of the test PostgreSQL (scripts/postgres.sh) instead of
//! HOME/beamflow.db: `make test` runs the server suites both ways.
#![allow(dead_code)] // each test crate uses its share

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beamflow::cli::client::Client;
use serde_json::Value;

/// The beamflow the tests run: this build's, or the one
/// `BEAMFLOW_TEST_BIN` names (to compare another build's behaviour, as the
/// shapes test does against an older one).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BEAMFLOW_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_beamflow").into())
    })
}

/// Kills the process (and reaps it) when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Env {
    pub home: PathBuf,
    /// The PostgreSQL store every server of this home uses, if any.
    pub db: Option<String>,
    _tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("beamflow-e2e-")
            .tempdir()
            .unwrap();
        let db = match std::env::var("BEAMFLOW_TEST_STORE").as_deref() {
            Ok("postgres") => Some(fresh_postgres_db()),
            Ok("sqlite") | Err(_) => None,
            Ok(other) => panic!("BEAMFLOW_TEST_STORE={other}: expected sqlite or postgres"),
        };
        Env {
            home: tmp.path().join("home"),
            db,
            _tmp: tmp,
        }
    }

    /// Runs the CLI against this home; it must succeed. Returns stdout.
    pub fn beamflow_ok(&self, args: &[&str]) -> String {
        let o = Command::new(bin())
            .env("BEAMFLOW_HOME", &self.home)
            // Tables at their full width, whatever terminal runs the tests.
            .env_remove("COLUMNS")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "beamflow {args:?}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the flow file `jobs/NAME.toml` in this process (`run --local
    /// --wait`) with inputs KEY=VALUE; it must succeed. Returns stdout.
    pub fn run_job(&self, name: &str, sets: &[String]) -> String {
        let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../jobs/{name}.toml"));
        let mut args = vec![
            "run".to_string(),
            flow.display().to_string(),
            "--local".into(),
            "--wait".into(),
        ];
        for s in sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.beamflow_ok(&args);
        assert!(out.contains("succeeded"), "{out}");
        out
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::create_dir_all(&self.home).unwrap();
        std::fs::File::create(self.home.join(format!("{name}.log"))).unwrap()
    }

    /// Starts a server and waits until it answers; `bind` keeps the port across restarts.
    pub fn server(&self, bind: &str, extra: &[&str]) -> (Proc, Client) {
        let _ = std::fs::remove_file(self.home.join("server.json"));
        let child = Proc(
            Command::new(bin())
                .args([
                    "--home",
                    self.home.to_str().unwrap(),
                    "server",
                    "--bind",
                    bind,
                ])
                .args(self.db.iter().flat_map(|url| ["--db", url.as_str()]))
                .args(extra)
                .stdout(Stdio::null())
                .stderr(self.log("server"))
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.home.join("server.json")) {
                if serde_json::from_str::<Value>(&text).is_ok() {
                    // server.json names the certificate the client pins.
                    let token = std::fs::read_to_string(self.home.join("token")).unwrap();
                    let c = Client::discover(&self.home, None, Some(token.trim().into()), None);
                    return (child, c.unwrap());
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pilot(&self, name: &str, cpus: u32) -> Proc {
        self.pilot_with(name, cpus, &["--idle-timeout", "0s"])
    }

    pub fn pilot_with(&self, name: &str, cpus: u32, extra: &[&str]) -> Proc {
        let child = Command::new(bin())
            .args([
                "--home",
                self.home.to_str().unwrap(),
                "pilot",
                "--name",
                name,
                "--cpus",
                &cpus.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(self.log(&format!("pilot-{name}")))
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// tests/flows/NAME.toml, copied into the home as a user would keep it.
    pub fn fixture(&self, name: &str) -> PathBuf {
        let src = fixture_path(name);
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        self.flow(name, &text)
    }

    pub fn flow(&self, name: &str, src: &str) -> PathBuf {
        let p = self.home.join(format!("{name}.toml"));
        std::fs::create_dir_all(&self.home).unwrap();
        std::fs::write(&p, src).unwrap();
        p
    }
}

/// The test PostgreSQL (started once by scripts/postgres.sh): its URL.
pub fn postgres_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "the test PostgreSQL did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// A new, empty database on the test PostgreSQL: its URL.
pub fn fresh_postgres_db() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = postgres_url();
    let name = format!(
        "bf_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    // The store's client runs its own runtime: not on a test's async thread.
    let create = format!("CREATE DATABASE {name}");
    let admin = base.to_string();
    std::thread::spawn(move || {
        let mut c = beamflow::store::Db::postgres(&admin).expect("connect");
        c.batch(&create).expect("create database");
    })
    .join()
    .unwrap();
    base.replacen("/postgres?", &format!("/{name}?"), 1)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback address whose port is free now, so a restarted server can take it again.
pub fn free_bind() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// A run with its attempts and events, as the API shows it.
pub async fn detail(c: &Client, id: u64) -> beamflow::store::RunDetail {
    c.get(&format!("/api/runs/{id}")).await.unwrap()
}

pub async fn wait_pilots(c: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p: Vec<Value> = c.get("/api/pilots").await.unwrap();
        if p.iter().filter(|x| x["state"] == "connected").count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "pilots did not connect: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A flow the tests share: tests/flows/NAME.toml.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/flows/{name}.toml"))
}
