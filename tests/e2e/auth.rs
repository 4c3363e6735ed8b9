//! Tokens and what they open, their rotation and revocation, secrets kept from steps, and `beamflow doctor`.

use super::*;

#[test]
fn requests_without_the_token_are_refused() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    rt().block_on(async {
        let http = c.http_builder().build().unwrap();
        let health = http.get(format!("{}/health", c.url)).send().await.unwrap();
        assert_eq!(health.status(), 200);
        for path in [
            "/api/runs",
            "/api/flows",
            "/api/pilots",
            "/api/catalog",
            "/api/pilot",
        ] {
            let r = http.get(format!("{}{path}", c.url)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} without token");
            let r = http
                .get(format!("{}{path}", c.url))
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{path} with a wrong token");
        }
        let r = http
            .post(format!("{}/api/runs", c.url))
            .json(&json!({"flow": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("missing token"));
        // And the right token works.
        let ok: Vec<Value> = c.get("/api/runs").await.unwrap();
        assert!(ok.is_empty());
    });
    let mode = std::fs::metadata(env.home.join("token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

/// The pilots' token serves a pilot and opens nothing else.
#[test]
fn the_pilot_token_opens_the_pilot_endpoint_only() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let path = env.home.join("pilot-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    let admin = std::fs::read_to_string(env.home.join("token")).unwrap();
    assert_ne!(token.trim(), admin.trim());
    let _pilot = env.pilot("a", 2);
    let flow = env.fixture("one");
    rt().block_on(async {
        // The pilot connected with it and runs steps.
        let d = start_one(&c, &flow).await;
        let runs = c
            .wait(&[d.run.id], false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(runs[0].state, "succeeded");
        let as_pilot = Client::discover(&env.home, None, Some(token.trim().into()), None).unwrap();
        for path in [
            "/api/runs",
            "/api/flows",
            "/api/pilots",
            "/api/tokens",
            "/api/alloc",
        ] {
            let err = as_pilot.get::<Value>(path).await.unwrap_err().to_string();
            assert!(err.contains("a pilot token does not open"), "{path}: {err}");
        }
        let err = as_pilot
            .post::<Value, _>("/api/runs", &json!({ "flow": "one", "inputs": [{}] }))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("403") || err.contains("does not open"),
            "{err}"
        );
    });
    let list = env.beamflow_ok(&["--json", "token", "list"]);
    let l: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert!(
        l.iter()
            .any(|t| t["name"] == "pilots" && t["role"] == "pilot"),
        "{l:?}"
    );
}

/// Revoking a token ends what it holds open: an event stream, and a
/// pilot's connection (the pilot, its token refused, leaves).
#[test]
fn a_revoked_token_loses_its_open_streams_and_pilot_connection() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let viewer = env.beamflow_ok(&["token", "add", "wall", "--role", "viewer"]);
    let pilot_token = env.beamflow_ok(&["token", "add", "p2", "--role", "pilot"]);
    let mut pilot = Proc(
        Command::new(bin())
            .args([
                "--home",
                env.home.to_str().unwrap(),
                "--token",
                pilot_token.trim(),
            ])
            .args([
                "pilot",
                "--name",
                "p2",
                "--cpus",
                "1",
                "--idle-timeout",
                "0s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(env.log("pilot-p2"))
            .spawn()
            .unwrap(),
    );
    rt().block_on(async {
        use futures_util::StreamExt;
        wait_pilots(&c, 1).await;
        let http = c.http_builder().build().unwrap();
        let resp = http
            .get(format!("{}/api/events", c.url))
            .bearer_auth(viewer.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let t0 = Instant::now();
        env.beamflow_ok(&["token", "revoke", "wall"]);
        env.beamflow_ok(&["token", "revoke", "p2"]);
        // The stream ends (keep-alive comments may come first).
        loop {
            match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(None) | Ok(Some(Err(_))) => break,
                Err(_) => panic!("the revoked viewer's event stream is still open"),
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    });
    let exit = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        pilot.0.try_wait().unwrap()
    });
    assert!(
        exit.is_some(),
        "the pilot with a revoked token is still running"
    );
    let log = std::fs::read_to_string(env.home.join("pilot-p2.log")).unwrap();
    assert!(log.contains("rejected the token (401)"), "{log}");
}

/// Each attack on the tokens fails: a viewer's token cannot start runs, a
/// submitter's cannot act as a pilot or touch allocation queues or tokens,
/// a revoked token and the old home token after its grace are refused; a
/// pilot keeps working across the rotation and reconnects, after a server
/// restart, with the new token it re-reads from its file.
#[test]
fn tokens_have_roles_and_the_home_token_rotates_under_a_running_pilot() {
    let env = Env::new();
    let bind = free_bind();
    let (server, admin) = env.server(&bind, &[]);
    let _pilot = env.pilot("p", 1);
    let flow = env.fixture("hello");
    let new_token = |name: &str, role: &str| -> String {
        env.beamflow_ok(&["token", "add", name, "--role", role])
            .trim()
            .to_string()
    };
    let viewer = new_token("wall", "viewer");
    let submitter = new_token("beamline", "submitter");
    assert_eq!((viewer.len(), submitter.len()), (64, 64));
    let listed = env.beamflow_ok(&["--json", "token", "list"]);
    assert!(
        listed.contains("\"wall\"") && !listed.contains(&viewer),
        "{listed}"
    );
    let stored = std::fs::read_to_string(env.home.join("tokens.json")).unwrap();
    assert!(!stored.contains(&viewer) && !stored.contains(&submitter));
    let old = std::fs::read_to_string(env.home.join("token")).unwrap();
    let mut server = server;
    rt().block_on(async {
        wait_pilots(&admin, 1).await;
        let http = admin.http_builder().build().unwrap();
        let status = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
            let mut r = http
                .request(method, format!("{}{path}", admin.url))
                .bearer_auth(token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            async move { r.send().await.unwrap().status().as_u16() }
        };
        use reqwest::Method;
        assert_eq!(status(Method::GET, "/api/runs", &viewer, None).await, 200);
        let run = json!({ "flow": "hello", "inputs": [{}] });
        assert_eq!(
            status(Method::POST, "/api/runs", &viewer, Some(run.clone())).await,
            403
        );
        let sub = admin.with_token(&submitter);
        sub.register(&flow).await.unwrap();
        let ids = sub.submit("hello", None, vec![json!({})]).await.unwrap();
        for (m, path) in [
            (Method::GET, "/api/pilot"),
            (Method::GET, "/api/alloc"),
            (Method::GET, "/api/tokens"),
            (Method::POST, "/api/tokens/rotate"),
        ] {
            assert_eq!(
                status(m, path, &submitter, Some(json!({}))).await,
                403,
                "{path}"
            );
        }
        // Anyone who may watch may sign a browser in (with their own role).
        for who in [&submitter, &viewer] {
            let code = status(Method::POST, "/api/ui/code", who, Some(json!({}))).await;
            assert_eq!(code, 200);
        }
        let done = admin
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(done[0].state, "succeeded");
        env.beamflow_ok(&["token", "revoke", "wall"]);
        assert_eq!(status(Method::GET, "/api/runs", &viewer, None).await, 401);

        // Rotation: the old home token stays good for its grace only; the
        // pilot's connection carries on.
        env.beamflow_ok(&["token", "rotate", "--grace", "1s"]);
        let new = std::fs::read_to_string(env.home.join("token")).unwrap();
        assert_ne!(new, old);
        assert_eq!(status(Method::GET, "/api/pilots", &old, None).await, 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(status(Method::GET, "/api/pilots", &old, None).await, 401);
        let fresh = admin.with_token(new.trim());
        let ids = fresh.submit("hello", None, vec![json!({})]).await.unwrap();
        let done = fresh
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(
            done[0].state, "succeeded",
            "the pilot runs on after the rotation"
        );
    });
    // A restarted server knows only the new token: the pilot reconnects
    // with it (read again from its file) and runs more work.
    server.kill9();
    let (_server, c) = env.server(&bind, &[]);
    rt().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p: Vec<Value> = c.get("/api/pilots").await.unwrap();
            if p.iter().any(|x| x["state"] == "connected") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the pilot did not reconnect: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids = c.submit("hello", None, vec![json!({})]).await.unwrap();
        let done = c
            .wait(&ids, false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(done[0].state, "succeeded");
    });
    // No token, old or new, admin's or anyone's, is ever logged.
    let new = std::fs::read_to_string(env.home.join("token")).unwrap();
    for log in ["server.log", "pilot-p.log"] {
        let text = std::fs::read_to_string(env.home.join(log)).unwrap();
        for t in [&old, &new, &viewer, &submitter] {
            assert!(!text.contains(t.trim()), "a token in {log}");
        }
    }
}

/// A shell step sees the pilot's environment without its secrets, and
/// the tokens never reach the logs.
#[test]
fn shell_steps_get_no_secrets_from_the_pilot() {
    let env = Env::new();
    let dump_path = env.home.join("env.txt");
    let flow = env.flow(
        "envdump",
        &format!(
            r#"
name = "envdump"
version = 1
[[steps]]
name = "dump"
action = "shell"
params = {{ script = "env | sort > {}", env = {{ STEP_TOKEN = "given" }} }}
"#,
            dump_path.display()
        ),
    );
    let o = Command::new(bin())
        .args(["--home", env.home.to_str().unwrap()])
        .args(["run", flow.to_str().unwrap(), "--local", "--wait"])
        .env("BEAMFLOW_TOKEN", "t0ken-of-the-pilot")
        .env("GLOBUS_CLIENT_SECRET", "s3cret")
        .env("AWS_SECRET_ACCESS_KEY", "aws-key")
        .env("SITE_MODULE_VAR", "kept")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    let dump = std::fs::read_to_string(&dump_path).unwrap();
    for secret in ["t0ken-of-the-pilot", "s3cret", "aws-key"] {
        assert!(!dump.contains(secret), "{secret} leaked:\n{dump}");
        assert!(!text.contains(secret), "{secret} in the output:\n{text}");
    }
    assert!(dump.contains("SITE_MODULE_VAR=kept"), "{dump}");
    assert!(
        dump.contains("STEP_TOKEN=given"),
        "a step's own env is its own: {dump}"
    );
    assert!(dump.lines().any(|l| l.starts_with("PATH=")), "{dump}");
}

/// `beamflow doctor` passes on a sound setup and names what is wrong
/// otherwise: a refused token, a site whose scheduler commands are missing
/// and whose scratch directory cannot be written.
#[test]
fn doctor_names_what_is_wrong() {
    let env = Env::new();
    let (_server, _c) = env.server("127.0.0.1:0", &[]);
    let doctor = |extra: &[&str]| {
        let o = Command::new(bin())
            .args(["--home", env.home.to_str().unwrap(), "--json"])
            .args(extra)
            .arg("doctor")
            .output()
            .unwrap();
        let checks: Vec<Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
        (o.status.code(), checks)
    };
    let level = |checks: &[Value], what: &str| {
        checks
            .iter()
            .find(|c| c["what"] == what)
            .map(|c| {
                (
                    c["level"].as_str().unwrap().to_string(),
                    c["detail"].to_string(),
                )
            })
            .unwrap_or_else(|| panic!("no check `{what}`: {checks:?}"))
    };
    let (code, checks) = doctor(&[]);
    assert_eq!(code, Some(0), "{checks:#?}");
    assert_eq!(level(&checks, "token").0, "ok");
    assert_eq!(level(&checks, "token file").0, "ok");
    let (code, checks) = doctor(&["--token", "wrong"]);
    assert_eq!(code, Some(1));
    let (lvl, detail) = level(&checks, "token");
    assert_eq!(lvl, "fail");
    assert!(detail.contains("invalid token"), "{detail}");
    let site = env.home.join("pbs-site.toml");
    std::fs::write(
        &site,
        "name = \"nowhere\"\nscheduler = \"pbs\"\naccount = \"x\"\nscratch = \"/nonexistent/scratch\"\n[targets.cpu]\nwalltime = \"1h\"\n",
    )
    .unwrap();
    let o = Command::new(bin())
        .args([
            "--home",
            env.home.to_str().unwrap(),
            "--json",
            "doctor",
            "--site",
        ])
        .arg(&site)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let (lvl, detail) = level(&checks, "command qsub");
    assert_eq!(lvl, "fail");
    assert!(detail.contains("not on PATH"), "{detail}");
    let (lvl, detail) = level(&checks, "scratch");
    assert_eq!(lvl, "fail");
    assert!(detail.contains("/nonexistent/scratch"), "{detail}");
    assert!(
        checks.iter().all(|c| c["what"] != "site account"),
        "x is no placeholder"
    );
    // The shipped example still has its made-up project.
    let polaris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs/polaris.toml");
    let o = Command::new(bin())
        .args([
            "--home",
            env.home.to_str().unwrap(),
            "--json",
            "doctor",
            "--site",
        ])
        .arg(&polaris)
        .output()
        .unwrap();
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let (lvl, detail) = level(&checks, "site account");
    assert_eq!(lvl, "warn");
    assert!(
        detail.contains("is the example's placeholder: set your project in the site config"),
        "{detail}"
    );
    assert!(detail.contains("MyProject"), "{detail}");
}
