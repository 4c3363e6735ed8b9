//! The web page in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver), against a real server and pilot. A run started
//! from the page completes live in the list, the catalog is searched by a
//! facet, the run's timeline, logs and files are opened, and the report and
//! pilots pages render. Screenshots go to `target/ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beamflow::cli::client::Client;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

/// Three steps with a second of work each, so the live list has time to show
/// the run moving; the last publishes a record with a PNG thumbnail.
const FLOW: &str = r#"
name = "ui-demo"
version = 1
description = "prepare, analyse (draws a thumbnail), publish"

[input.sample]
type = "string"

[[steps]]
name = "prepare"
action = "shell"
params = { script = "sleep 1; echo prepared {{ input.sample }}" }

[[steps]]
name = "analyse"
action = "shell"
outputs = ["png"]
[steps.params]
script = '''
sleep 1
mkdir -p "{{ run.dir }}/results"
# A 2x1 PNG: the card's thumbnail.
echo 'iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAD0lEQVR4nGOQj19xs0kbAAj2Aq2iYBdKAAAAAElFTkSuQmCC' | base64 -d > "{{ run.dir }}/results/thumb.png"
printf '{"png": "%s"}' "{{ run.dir }}/results/thumb.png" > "$BEAMFLOW_OUTPUTS"
'''

[[steps]]
name = "publish"
action = "publish"
[steps.params]
title = "UI demo {{ input.sample }}"
fields = { sample = "{{ input.sample }}", technique = "TEST" }
files = ["{{ steps.analyse.outputs.png }}"]
outputs = { answer = 42 }
"#;

fn shots() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Browser, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// chromedriver on a free port, killed with the test.
fn chromedriver(env: &Env) -> (Proc, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(env.log("chromedriver"))
        .spawn()
        .expect("chromedriver not found: scripts/setup.sh installs Debian's chromium-driver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), url)
}

/// What Chromium's `--ignore-certificate-errors-spki-list` takes: the
/// base64 SHA-256 of the server certificate's public key (computed with
/// openssl, apart from the server's own code), so the browser trusts that
/// key and no other.
fn spki_pin(cert: &Path) -> String {
    let o = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
        .arg("spki")
        .arg(cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

async fn browser(driver: &str, profile: &Path, spki: &str) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
                format!("--ignore-certificate-errors-spki-list={spki}"),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Evaluates `js` (a function body returning a value) in the page until it
/// returns something truthy; returns it.
async fn until(b: &Browser, what: &str, js: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = b.execute(js, vec![]).await.unwrap();
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            shot(b, &format!("failed-{}", what.replace(' ', "-"))).await;
            panic!("{what}: not within {limit:?} (last {v})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_run(c: &Client, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d: Value = c.get(&format!("/api/runs/{id}")).await.unwrap();
        match d["run"]["state"].as_str() {
            Some("succeeded") => return,
            Some("failed" | "cancelled") => panic!("run {id}: {d}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "run {id} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_web_page_follows_a_run_live_and_finds_it_in_the_catalog() {
    let env = Env::new();
    let (_server, c) = env.server("127.0.0.1:0", &[]);
    let _pilot = env.pilot("ui", 2);
    let (_driver, driver_url) = chromedriver(&env);
    let flow = env.flow("ui-demo", FLOW);
    rt().block_on(async {
        wait_pilots(&c, 1).await;
        c.register(&flow).await.unwrap();
        // Two earlier runs: the catalog has facets to choose between.
        let ids = c
            .submit("ui-demo", None, vec![json!({"sample": "silica"}), json!({"sample": "steel"})])
            .await
            .unwrap();
        for id in &ids {
            wait_run(&c, *id).await;
        }

        // Pages need the token: without it, the login page.
        let http = c
            .http_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = http.get(format!("{}/ui/runs", c.url)).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert!(r.headers()["location"].to_str().unwrap().starts_with("/ui/login"));
        let r = http
            .get(format!("{}/ui/login?code=made-up", c.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // The session cookie is not the token, and opens only what the page
        // needs: the events, and starting runs from its own origin.
        let token = std::fs::read_to_string(env.home.join("token")).unwrap();
        let session = beamflow::server::ui::session_key(token.trim(), beamflow::api::Role::Admin);
        assert!(!session.contains(token.trim()));
        let with = |method: reqwest::Method, path: &str, cookie: &str| {
            http.request(method, format!("{}{path}", c.url))
                .header("cookie", format!("other=1; beamflow_session={cookie}"))
        };
        let status = |r: reqwest::Response| r.status().as_u16();
        let get = reqwest::Method::GET;
        let post = reqwest::Method::POST;
        assert_eq!(status(with(get.clone(), "/api/runs", token.trim()).send().await.unwrap()), 401);
        assert_eq!(status(with(get.clone(), "/api/runs", &session).send().await.unwrap()), 403);
        assert_eq!(status(with(get.clone(), "/api/pilot", &session).send().await.unwrap()), 403);
        let start = json!({ "flow": "no-such-flow" });
        // From another origin (a page on another port): refused.
        let other = with(post.clone(), "/api/runs", &session)
            .header("origin", "http://127.0.0.1:1")
            .json(&start);
        assert_eq!(status(other.send().await.unwrap()), 403);
        // From the page's own origin: through to the handler (no such flow).
        let own = with(post.clone(), "/api/runs", &session)
            .header("sec-fetch-site", "same-origin")
            .json(&start);
        assert_eq!(status(own.send().await.unwrap()), 404);
        assert_eq!(
            status(with(get.clone(), "/ui/file?path=%2Fetc%2Fpasswd", &session).send().await.unwrap()),
            403
        );
        // A viewer signs in with `beamflow --token V ui` and watches, but
        // starts nothing.
        let viewer = env.beamflow_ok(&["token", "add", "wall", "--role", "viewer"]);
        let out = env.beamflow_ok(&["--token", viewer.trim(), "ui"]);
        let link = out.lines().find(|l| l.starts_with("http")).unwrap().to_string();
        let r = http.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 303, "the viewer's link signs in");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let watching = set
            .split(';')
            .next()
            .and_then(|kv| kv.strip_prefix("beamflow_session="))
            .unwrap()
            .to_string();
        assert_ne!(watching, session, "the viewer's session is not the admin's");
        assert_eq!(status(with(get.clone(), "/ui/runs", &watching).send().await.unwrap()), 200);
        let own = with(post.clone(), "/api/runs", &watching)
            .header("sec-fetch-site", "same-origin")
            .json(&start);
        assert_eq!(status(own.send().await.unwrap()), 403, "a viewer starts no run");
        // The form takes a viewer's token too.
        let r = http
            .post(format!("{}/ui/login", c.url))
            .form(&[("token", viewer.trim())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);

        // Sign in with the link `beamflow ui` prints.
        let out = env.beamflow_ok(&["ui"]);
        let link = out
            .lines()
            .find(|l| l.starts_with("http"))
            .unwrap_or_else(|| panic!("no link in:\n{out}"))
            .to_string();
        let profile = env.home.join("chromium-profile");
        let spki = spki_pin(&env.home.join("tls/cert.pem"));
        let b = browser(&driver_url, &profile, &spki).await;
        b.goto(&link).await.unwrap();
        let url = b.current_url().await.unwrap();
        assert_eq!(url.path(), "/ui/runs", "the login moves on to the runs");
        let again = http.get(&link).send().await.unwrap();
        assert_eq!(again.status(), 401, "a sign-in link works once");
        assert!(url.query().is_none(), "the token leaves the address bar: {url}");
        until(&b, "the earlier runs listed", "return document.querySelectorAll('#runs tr[data-state=succeeded]').length == 2", Duration::from_secs(10)).await;
        until(&b, "the event stream open", "return document.getElementById('live').classList.contains('on')", Duration::from_secs(10)).await;

        // Start a run from the form; it must appear and finish in the list
        // without the page being loaded again.
        b.execute("window.__same_page = 1; return true", vec![]).await.unwrap();
        b.find(Locator::Css("#start summary")).await.unwrap().click().await.unwrap();
        b.find(Locator::Css("#start-flow")).await.unwrap().select_by_value("ui-demo").await.unwrap();
        let input = b.find(Locator::Css("#start-input")).await.unwrap();
        let template = input.prop("value").await.unwrap().unwrap_or_default();
        assert!(template.contains("\"sample\""), "the form offers the flow's inputs: {template}");
        input.clear().await.unwrap();
        input.send_keys(r#"{"sample": "gel"}"#).await.unwrap();
        b.find(Locator::Css("#start-submit")).await.unwrap().click().await.unwrap();
        let id = until(&b, "the started run's link", "const a = document.getElementById('started-run'); return a && a.dataset.run", Duration::from_secs(10)).await;
        let id: u64 = id.as_str().unwrap().parse().unwrap();
        let row = format!("#runs tr[data-run='{id}']");
        let seen = until(
            &b,
            "the new run in flight",
            &format!("const r = document.querySelector(\"{row}\"); return r && (r.dataset.state == 'running' || r.dataset.state == 'queued') && r.dataset.state"),
            Duration::from_secs(10),
        )
        .await;
        shot(&b, "runs-live").await;
        until(
            &b,
            "the new run succeeded",
            &format!("const r = document.querySelector(\"{row}\"); return r && r.dataset.state == 'succeeded' && r.querySelector('.steps').textContent == '3/3'"),
            Duration::from_secs(30),
        )
        .await;
        let same = b.execute("return window.__same_page === 1", vec![]).await.unwrap();
        assert_eq!(same, json!(true), "the list updated in place (was {seen} first)");
        assert_eq!(
            b.execute("return document.querySelectorAll('#runs tbody tr').length", vec![]).await.unwrap(),
            json!(3)
        );
        shot(&b, "runs-done").await;

        // The catalog: three records; the facet sample = gel keeps one,
        // with its thumbnail drawn.
        b.goto(&format!("{}/ui/catalog", c.url)).await.unwrap();
        until(&b, "three records", "return document.querySelectorAll('.card').length == 3", Duration::from_secs(5)).await;
        b.find(Locator::Css("a[data-facet='fields.sample'][data-value='gel']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&b, "one record for gel", "return document.querySelectorAll('.card').length == 1 && document.querySelector('.card h3').textContent.includes('UI demo gel')", Duration::from_secs(5)).await;
        until(&b, "the thumbnail loaded", "const i = document.querySelector('.card .thumb img'); return i && i.complete && i.naturalWidth == 2", Duration::from_secs(5)).await;
        let url = b.current_url().await.unwrap();
        assert!(url.query().unwrap().contains("field=fields.sample%3Dgel"), "{url}");
        shot(&b, "catalog-facet").await;

        // The run's page from the card: the timeline has its three steps in
        // order, the log and the file are there.
        b.find(Locator::Css(".card h3 a")).await.unwrap().click().await.unwrap();
        let steps = until(&b, "the timeline", "const g = document.querySelectorAll('#gantt g.row'); return g.length == 3 && [...g].map(x => x.dataset.step).join(',')", Duration::from_secs(5)).await;
        assert_eq!(steps, json!("prepare,analyse,publish"));
        let running = b.execute("return document.querySelectorAll('#gantt rect.seg-running').length", vec![]).await.unwrap();
        assert_eq!(running, json!(3));
        let logs = b.execute("return [...document.querySelectorAll('pre.log')].map(p => p.textContent).join('\\n')", vec![]).await.unwrap();
        assert!(logs.as_str().unwrap().contains("prepared gel"), "{logs}");
        let files = b.execute("return [...document.querySelectorAll('#files a')].map(a => a.textContent).join(',')", vec![]).await.unwrap();
        assert!(files.as_str().unwrap().contains("results/thumb.png"), "{files}");
        assert_eq!(b.current_url().await.unwrap().path(), format!("/ui/runs/{id}"));
        shot(&b, "run-timeline").await;

        // A run's page follows the run while it is in flight.
        let next = c.submit("ui-demo", None, vec![json!({"sample": "glass"})]).await.unwrap()[0];
        b.goto(&format!("{}/ui/runs/{next}", c.url)).await.unwrap();
        b.execute("window.__same_page = 2; return true", vec![]).await.unwrap();
        let state = b.find(Locator::Id("run-state")).await.unwrap().text().await.unwrap();
        assert!(state == "queued" || state == "running", "{state}");
        until(&b, "the run's page showing it done", "const s = document.getElementById('run-state'); return s && s.textContent == 'succeeded' && document.querySelectorAll('#gantt g.row').length == 3", Duration::from_secs(30)).await;
        let same = b.execute("return window.__same_page === 2", vec![]).await.unwrap();
        assert_eq!(same, json!(true), "the run's page updated in place");

        // The flow's report and the pilots page.
        b.goto(&format!("{}/ui/flows/ui-demo", c.url)).await.unwrap();
        let summary = b.find(Locator::Id("report-summary")).await.unwrap().text().await.unwrap();
        assert!(summary.contains("4 runs finished: 4 succeeded"), "{summary}");
        until(&b, "the report's plots", "return ['plot-runtimes', 'plot-concurrency'].every(id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 100 })", Duration::from_secs(10)).await;
        shot(&b, "flow-report").await;
        b.goto(&format!("{}/ui/pilots", c.url)).await.unwrap();
        let pilot = b.find(Locator::Css("#pilots tbody tr")).await.unwrap().text().await.unwrap();
        assert!(pilot.contains("connected") && pilot.contains("2 CPUs"), "{pilot}");
        shot(&b, "pilots").await;
        b.close().await.unwrap();
    });
}
