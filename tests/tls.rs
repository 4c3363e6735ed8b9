//! TLS between the server, its clients and pilots, against real `beamflow
//! server` and `beamflow pilot` processes. Each attack fails: plain HTTP on
//! the TLS port gets no answer, a client or pilot pinning another
//! certificate is refused with both fingerprints named, and a pilot sent to
//! an impostor server never reaches it. Fingerprints and names are checked
//! with openssl, apart from beamflow's own code.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beamflow::cli::client::Client;
use serde_json::{json, Value};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

const HELLO: &str = r#"
name = "hello"
version = 1
[[steps]]
name = "say"
action = "shell"
params = { script = "echo hello over tls" }
"#;

fn access(home: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap()
}

fn openssl(args: &[&str], cert: &Path) -> String {
    let o = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(cert)
        .output()
        .expect("openssl (Debian's ca-certificates brings it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `openssl x509 -fingerprint -sha256`: AB:CD:...
fn fingerprint(cert: &Path) -> String {
    let out = openssl(&["x509", "-noout", "-fingerprint", "-sha256"], cert);
    out.trim().rsplit('=').next().unwrap().to_string()
}

fn token(home: &Path) -> String {
    std::fs::read_to_string(home.join("token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Registers and runs the hello flow once; returns the run's state.
async fn hello(c: &Client, env: &Env) -> String {
    let flow = env.flow("hello", HELLO);
    c.register(&flow).await.unwrap();
    let ids = c.submit("hello", None, vec![json!({})]).await.unwrap();
    let done = c
        .wait(&ids, false, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    done[0].state.to_string()
}

/// Waits for a process to end; `None` when it outlives `limit`.
fn ended(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = p.0.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_server_makes_its_certificate_once_serves_only_tls_and_runs_flows_over_it() {
    let env = Env::new();
    let bind = free_bind();
    let (server, c) = env.server(
        &bind,
        &[
            "--tls-name",
            "beamline-gw.example",
            "--tls-name",
            "10.1.2.3",
        ],
    );
    let a = access(&env.home);
    assert_eq!(a["url"], format!("https://{bind}"));
    let cert = env.home.join("tls/cert.pem");
    assert_eq!(a["cert"], cert.display().to_string());
    let fp = fingerprint(&cert);
    assert_eq!(a["fingerprint"], fp.as_str());
    assert_eq!(c.trust.as_ref().unwrap().fingerprint(), fp);
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(env.home.join("tls/key.pem")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let text = openssl(&["x509", "-noout", "-text"], &cert);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "DNS:beamline-gw.example",
        "IP Address:10.1.2.3",
        &format!("DNS:{}", host.trim()),
    ] {
        assert!(
            text.contains(name),
            "{name} not in the certificate:\n{text}"
        );
    }

    // The normal path: a pilot (pinning the home's certificate) runs a flow.
    let _pilot = env.pilot("p", 1);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        assert_eq!(hello(&c, &env).await, "succeeded");
    });

    // Plain HTTP on the TLS port: no HTTP answer, no data.
    let mut tcp = std::net::TcpStream::connect(&bind).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.contains("HTTP/") && !got.contains("version"),
        "plain HTTP got an answer: {got:?}"
    );
    let plain = rt().block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        http.get(format!("http://{bind}/api/runs"))
            .bearer_auth(token(&env.home))
            .send()
            .await
    });
    assert!(plain.is_err(), "plain HTTP got {plain:?}");

    // A restart keeps the certificate, so pilots that pinned it reconnect.
    drop(server);
    let (_server, c) = env.server(&bind, &[]);
    assert_eq!(fingerprint(&cert), fp);
    assert_eq!(access(&env.home)["fingerprint"], fp.as_str());
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        assert_eq!(hello(&c, &env).await, "succeeded");
    });
}

#[test]
fn clients_and_pilots_pinning_another_certificate_are_refused() {
    let victim = Env::new();
    let (_victim_server, vc) = victim.server("127.0.0.1:0", &[]);
    let impostor = Env::new();
    let (_impostor_server, ic) = impostor.server("127.0.0.1:0", &[]);
    let vfp = fingerprint(&victim.home.join("tls/cert.pem"));
    let ifp = fingerprint(&impostor.home.join("tls/cert.pem"));
    assert_ne!(vfp, ifp);

    // A client holding the victim's certificate, sent to the impostor.
    let wrong = Client::pinned(&ic.url, &token(&victim.home), vc.trust.clone());
    let e = rt()
        .block_on(wrong.get::<Value>("/api/runs"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing") && e.contains(&ifp) && e.contains(&vfp),
        "{e}"
    );
    // The same from the command line, with --url pointing elsewhere.
    let o = Command::new(bin())
        .arg("--home")
        .arg(&victim.home)
        .args(["--url", &ic.url, "runs", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&ifp) && err.contains(&vfp), "{err}");

    // A pilot with the victim's home (its token and certificate) sent to
    // the impostor refuses to connect and says why; the impostor sees no
    // pilot, so never the token.
    let mut stray = Proc(
        Command::new(bin())
            .arg("--home")
            .arg(&victim.home)
            .args(["--url", &ic.url, "pilot", "--name", "stray", "--cpus", "1"])
            .stdout(Stdio::null())
            .stderr(victim.log("pilot-stray"))
            .spawn()
            .unwrap(),
    );
    let status = ended(&mut stray, Duration::from_secs(20)).expect("the pilot gave up");
    assert!(!status.success());
    let log = std::fs::read_to_string(victim.home.join("pilot-stray.log")).unwrap();
    assert!(
        log.contains("refusing") && log.contains(&ifp) && log.contains(&vfp),
        "{log}"
    );
    rt().block_on(async {
        let seen: Vec<Value> = ic.get("/api/pilots").await.unwrap();
        assert!(seen.is_empty(), "the impostor saw {seen:?}");
    });

    // doctor names the refusal and both fingerprints.
    let o = Command::new(bin())
        .arg("--home")
        .arg(&victim.home)
        .args(["--json", "--url", &ic.url, "doctor"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let tls = checks
        .iter()
        .find(|c| c["what"] == "TLS handshake")
        .unwrap_or_else(|| panic!("{checks:?}"));
    assert_eq!(tls["level"], "fail");
    let detail = tls["detail"].as_str().unwrap();
    assert!(detail.contains(&ifp) && detail.contains(&vfp), "{detail}");
    // ... and, against the right server, that the handshake succeeds.
    let o = Command::new(bin())
        .arg("--home")
        .arg(&victim.home)
        .args(["--json", "doctor"])
        .output()
        .unwrap();
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{checks:#?}");
    let find = |what: &str| checks.iter().find(|c| c["what"] == what).unwrap().clone();
    assert_eq!(find("TLS handshake")["level"], "ok");
    assert!(find("TLS certificate")["detail"]
        .as_str()
        .unwrap()
        .contains(&vfp));
    assert_eq!(find("TLS key")["level"], "ok");

    // A pilot on another host (its own home, no server there) is given a
    // copy of the certificate and the token file: it connects and works.
    let elsewhere = Env::new();
    std::fs::create_dir_all(&elsewhere.home).unwrap();
    let copy: PathBuf = elsewhere.home.join("server-cert.pem");
    std::fs::copy(victim.home.join("tls/cert.pem"), &copy).unwrap();
    let _remote = Proc(
        Command::new(bin())
            .arg("--home")
            .arg(&elsewhere.home)
            .args(["--url", &vc.url, "pilot", "--name", "remote", "--cpus", "1"])
            .args(["--idle-timeout", "0s", "--token-file"])
            .arg(victim.home.join("token"))
            .env("BEAMFLOW_SERVER_CERT", &copy)
            .stdout(Stdio::null())
            .stderr(elsewhere.log("pilot-remote"))
            .spawn()
            .unwrap(),
    );
    rt().block_on(async {
        wait_pilots(&vc, 1).await;
        assert_eq!(hello(&vc, &victim).await, "succeeded");
    });
}

#[test]
fn an_operator_may_bring_a_certificate_or_turn_tls_off() {
    // A certificate made elsewhere (here by openssl).
    let env = Env::new();
    std::fs::create_dir_all(&env.home).unwrap();
    let cert = env.home.join("site.crt");
    let key = env.home.join("site.key");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=beamflow.site.example",
        ])
        .args(["-addext", "subjectAltName=DNS:beamflow.site.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_server, c) = env.server(
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let a = access(&env.home);
    assert_eq!(a["fingerprint"], fingerprint(&cert).as_str());
    assert_eq!(a["cert"], cert.display().to_string());
    assert!(!env.home.join("tls").exists(), "nothing generated");
    // Pinned, the certificate is accepted under any name (it names only
    // beamflow.site.example; the client dials 127.0.0.1).
    let _pilot = env.pilot("p", 1);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        assert_eq!(hello(&c, &env).await, "succeeded");
    });

    // --no-tls: plain HTTP, said loudly; clients follow server.json.
    let plain = Env::new();
    let (_server, c) = plain.server("127.0.0.1:0", &["--no-tls"]);
    assert!(c.url.starts_with("http://"), "{}", c.url);
    assert!(c.trust.is_none());
    let log = std::fs::read_to_string(plain.home.join("server.log")).unwrap();
    assert!(log.contains("TLS is off"), "{log}");
    assert!(!plain.home.join("tls").exists());
    let _pilot = plain.pilot("p", 1);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        assert_eq!(hello(&c, &plain).await, "succeeded");
    });
    // TLS off and names for a certificate contradict each other.
    let o = Command::new(bin())
        .arg("--home")
        .arg(&plain.home)
        .args(["server", "--no-tls", "--tls-name", "x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tls-name"));
}
