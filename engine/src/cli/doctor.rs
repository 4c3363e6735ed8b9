//! `beamflow doctor`: checks this machine, the server and a site config,
//! and says precisely what is wrong — each check names the file, command,
//! directory or address it looked at. Exits non-zero when any check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::client::Client;
use super::render::table;
use super::Ctx;
use crate::home::expand_home;
use crate::site::{Scheduler, SiteConfig};

#[derive(Args)]
pub struct DoctorArgs {
    /// Also check this site config (a name from site-configs/ or a path):
    /// scheduler commands, scratch and transfer roots, the pilot command,
    /// the server address compute nodes are given.
    #[arg(long)]
    pub site: Option<String>,
    /// With --site: submit a short pilot job for this target through the
    /// site's scheduler and check that a pilot on a compute node reaches
    /// the server with the pilots' token and pinned certificate.
    #[arg(long, requires = "site", value_name = "TARGET")]
    pub from_compute: Option<String>,
    /// With --from-compute: how long the job may wait in the queue.
    #[arg(long, default_value = "10m", value_parser = super::duration)]
    pub wait: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Check {
            level,
            what: what.into(),
            detail: detail.into(),
        });
    }
}

impl DoctorArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let checks = checks(
            &cx.home,
            cx.url.clone(),
            cx.token.clone(),
            cx.server_cert.clone(),
            &self,
        )
        .await;
        cx.out.show(&checks, |checks| {
            let mut t = table(&["", "check", "detail"]);
            for c in checks {
                let mark = match c.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                t.add_row(vec![mark.to_string(), c.what.clone(), c.detail.clone()]);
            }
            t
        });
        Ok(super::done(!checks.iter().any(|c| c.level == Level::Fail)))
    }
}

/// Runs every check, in order.
pub async fn checks(
    home: &Path,
    url: Option<String>,
    token: Option<String>,
    server_cert: Option<PathBuf>,
    a: &DoctorArgs,
) -> Vec<Check> {
    let mut r = Report::default();
    check_home(&mut r, home);
    check_server(
        &mut r,
        home,
        url.clone(),
        token.clone(),
        server_cert.clone(),
    )
    .await;
    if let Some(s) = &a.site {
        check_site(&mut r, s).await;
        if let Some(t) = &a.from_compute {
            let c = Client::discover(home, url.clone(), token.clone(), server_cert.clone());
            match c {
                Ok(c) => check_from_compute(&mut r, home, &c, server_cert, s, t, a.wait).await,
                Err(e) => r.add(Level::Fail, "from a compute node", format!("{e:#}")),
            }
        }
    }
    r.0
}

/// Submits a one-node pilot job serving only the target `doctor` (so it
/// takes no work), waits until its pilot connects, and cancels the job.
/// What fails is named: the submission, the job ending before its pilot
/// connected (with the end of its output: a refused certificate, an
/// unreachable address, a rejected token), or the queue wait.
async fn check_from_compute(
    r: &mut Report,
    home: &Path,
    c: &Client,
    server_cert: Option<PathBuf>,
    site_name: &str,
    target: &str,
    wait: Duration,
) {
    use crate::batch::script::{JobRequest, PilotCommand};
    use crate::batch::JobState;
    const WHAT: &str = "from a compute node";
    let site = match crate::site::find(site_name).and_then(|p| SiteConfig::load(&p)) {
        Ok(s) => s,
        Err(_) => return, // check_site said why
    };
    let t = match site.effective(target) {
        Ok(t) => t,
        Err(e) => return r.add(Level::Fail, WHAT, format!("{e:#}")),
    };
    let Some(sched) = crate::batch::Scheduler::for_site(site.scheduler) else {
        return r.add(
            Level::Warn,
            WHAT,
            format!(
                "site `{}` has no batch scheduler: pilots run where they are started",
                site.name
            ),
        );
    };
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "beamflow".into());
    let token_file = crate::home::pilot_token_file(home);
    let cert = server_cert.or_else(|| Some(crate::tls::home_cert(home)).filter(|p| p.is_file()));
    let pilot = PilotCommand::for_target(&t, &exe, &c.url, token_file, vec!["doctor".into()], 30)
        .pinning(cert);
    let url = pilot.url.clone();
    let stamp = crate::util::now_us();
    let dir = home.join("doctor").join(stamp.to_string());
    let req = JobRequest {
        name: "bf-doctor".into(),
        nodes: 1,
        walltime_s: t.walltime_s.min(600),
        reservation: None,
        dir: dir.clone(),
        pilot,
        target: t,
    };
    let script = match req.render() {
        Ok(s) => s,
        Err(e) => return r.add(Level::Fail, WHAT, format!("the job script: {e:#}")),
    };
    let path = dir.join("job.sh");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, script)) {
        return r.add(Level::Fail, WHAT, format!("{}: {e}", path.display()));
    }
    let job = match sched.submit(&path, &dir).await {
        Ok(j) => j,
        Err(e) => {
            return r.add(
                Level::Fail,
                WHAT,
                format!("submitting {}: {e}", path.display()),
            )
        }
    };
    let short = |id: &str| id.split('.').next().unwrap_or(id).to_string();
    let t0 = std::time::Instant::now();
    let outcome = loop {
        if let Ok(pilots) = c.pilots().await {
            let mine = pilots
                .iter()
                .find(|p| p.info.batch_job.as_deref().map(short) == Some(short(&job.0)));
            if let Some(p) = mine {
                break Ok(format!(
                    "the pilot of job {job} on {} reached {url} (pinned certificate, pilot token) {:.1} s after submission",
                    p.host,
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
        let state = sched
            .status(std::slice::from_ref(&job))
            .await
            .ok()
            .and_then(|m| m.get(&job).cloned());
        if let Some(JobState::Finished { end, exit }) = state {
            let out = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
            let tail: Vec<&str> = out
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            break Err((
                Level::Fail,
                format!(
                    "job {job} ended ({end:?}, exit {}) before its pilot reached {url}; its output ({}) ends with:\n{}",
                    exit.map_or("?".into(), |e| e.to_string()),
                    dir.join("stdout").display(),
                    tail.join("\n")
                ),
            ));
        }
        if t0.elapsed() > wait {
            break Err((
                Level::Warn,
                format!(
                    "job {job} did not start within {} ({}); nothing was learnt",
                    crate::util::fmt_secs(wait.as_secs_f64()),
                    match state {
                        Some(JobState::Queued { reason }) if !reason.is_empty() =>
                            format!("queued: {reason}"),
                        _ => "still waiting".into(),
                    }
                ),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = sched.cancel(std::slice::from_ref(&job)).await;
    match outcome {
        Ok(detail) => r.add(Level::Ok, WHAT, detail),
        Err((level, detail)) => r.add(level, WHAT, detail),
    }
}

fn check_home(r: &mut Report, home: &Path) {
    let key = home.join(crate::tls::KEY_FILE);
    if let Ok(m) = std::fs::metadata(&key) {
        check_private(r, "TLS key", &key, &m, "the server's private key");
    }
    let token = home.join("token");
    match std::fs::metadata(&token) {
        Ok(m) => check_private(r, "token file", &token, &m, "it"),
        Err(e) => r.add(
            Level::Warn,
            "token file",
            format!(
                "{}: {e} (the server makes it on first start; clients may pass --token)",
                token.display()
            ),
        ),
    }
}

/// A secret file must be readable by its owner only.
fn check_private(r: &mut Report, what: &str, path: &Path, m: &std::fs::Metadata, holds: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        r.add(
            Level::Fail,
            what,
            format!(
                "{} is mode {mode:o}: others can read {holds} (chmod 600 {})",
                path.display(),
                path.display()
            ),
        );
    } else {
        r.add(
            Level::Ok,
            what,
            format!("{} (mode {mode:o})", path.display()),
        );
    }
}

async fn check_server(
    r: &mut Report,
    home: &Path,
    url: Option<String>,
    token: Option<String>,
    server_cert: Option<PathBuf>,
) {
    let c = match Client::discover(home, url, token, server_cert) {
        Ok(c) => c,
        Err(e) => {
            r.add(Level::Fail, "server", format!("{e:#}"));
            return;
        }
    };
    match &c.trust {
        Some(t) => r.add(
            Level::Ok,
            "TLS certificate",
            format!("{} (SHA-256 {})", t.path.display(), t.fingerprint()),
        ),
        None => r.add(
            Level::Warn,
            "TLS",
            format!(
                "{} is plain HTTP: the token and data cross the network in clear text (fine \
                 on loopback or behind a proxy that terminates TLS)",
                c.url
            ),
        ),
    }
    let http = c
        .http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let health = http.get(format!("{}/health", c.url)).send().await;
    match health {
        Ok(resp) => {
            let theirs = match resp.json::<crate::api::Health>().await {
                Ok(h) => h.version,
                Err(e) => {
                    let what = format!("{} does not answer as a beamflow server: {e}", c.url);
                    r.add(Level::Fail, "server", what);
                    return;
                }
            };
            let ours = env!("CARGO_PKG_VERSION");
            if theirs == ours {
                r.add(
                    Level::Ok,
                    "server",
                    format!("{} answers (version {theirs})", c.url),
                );
            } else {
                r.add(
                    Level::Warn,
                    "server",
                    format!("{} runs version {theirs}, this beamflow is {ours}", c.url),
                );
            }
        }
        Err(e) => {
            let msg = format!("{:#}", c.request_error(&e));
            let tls = crate::tls::refusal(&e).is_some() || msg.starts_with("TLS with");
            let what = if tls { "TLS handshake" } else { "server" };
            r.add(Level::Fail, what, msg);
            return;
        }
    }
    if c.trust.is_some() {
        r.add(
            Level::Ok,
            "TLS handshake",
            format!("{} presented the pinned certificate", c.url),
        );
    }
    match c.flows().await {
        Ok(_) => r.add(Level::Ok, "token", "accepted by the server"),
        Err(e) => r.add(
            Level::Fail,
            "token",
            format!(
                "{e:#} — use the server's BEAMFLOW_HOME/token or a token from `beamflow token add`"
            ),
        ),
    }
}

/// `prog` on PATH, if it is there.
fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

async fn check_site(r: &mut Report, name: &str) {
    let site = match crate::site::find(name).and_then(|p| SiteConfig::load(&p)) {
        Ok(s) => s,
        Err(e) => {
            r.add(Level::Fail, "site config", format!("{e:#}"));
            return;
        }
    };
    r.add(
        Level::Ok,
        "site config",
        format!("`{}` is valid", site.name),
    );
    // The example configs ship with made-up projects; a job charged to one
    // is refused by the scheduler, late and in its own words.
    let mut accounts: Vec<(String, &str)> = vec![];
    if let Some(a) = &site.account {
        accounts.push(("account".into(), a));
    }
    for (name, t) in &site.targets {
        if let Some(a) = &t.account {
            accounts.push((format!("targets.{name}.account"), a));
        }
    }
    for (key, a) in accounts {
        if crate::site::PLACEHOLDER_ACCOUNTS.contains(&a) {
            r.add(
                Level::Warn,
                "site account",
                format!("{key} = \"{a}\" is the example's placeholder: set your project in the site config"),
            );
        }
    }
    let commands: &[&str] = match site.scheduler {
        Scheduler::Slurm => &["sbatch", "squeue", "scancel", "scontrol"],
        Scheduler::Pbs => &["qsub", "qstat", "qdel"],
        Scheduler::Local => &[],
    };
    for cmd in commands {
        match which(cmd) {
            Some(p) => r.add(Level::Ok, format!("command {cmd}"), p.display().to_string()),
            None => r.add(
                Level::Fail,
                format!("command {cmd}"),
                format!(
                    "not on PATH: the allocation manager submits with it (run the server where {:?} jobs are submitted, e.g. a login node)",
                    site.scheduler
                ),
            ),
        }
    }
    let mut scratch: Vec<String> = site.scratch.iter().cloned().collect();
    for t in site.targets.values() {
        scratch.extend(t.scratch.iter().cloned());
    }
    scratch.sort();
    scratch.dedup();
    for s in scratch {
        let dir = expand_home(&s);
        let res = tempfile::Builder::new()
            .prefix(".beamflow-doctor-")
            .tempfile_in(&dir);
        match res {
            Ok(_) => r.add(
                Level::Ok,
                "scratch",
                format!("{} is writable", dir.display()),
            ),
            Err(e) => r.add(
                Level::Fail,
                "scratch",
                format!("{}: cannot write there: {e}", dir.display()),
            ),
        }
    }
    for root in site.transfer.roots() {
        if root.is_dir() {
            r.add(Level::Ok, "transfer root", root.display().to_string());
        } else {
            r.add(
                Level::Warn,
                "transfer root",
                format!(
                    "{}: no such directory here (transfers into it will fail)",
                    root.display()
                ),
            );
        }
    }
    let exe = site
        .pilot
        .command
        .clone()
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok());
    if let Some(exe) = exe {
        if exe.is_file() {
            r.add(Level::Ok, "pilot command", exe.display().to_string());
        } else {
            r.add(
                Level::Fail,
                "pilot command",
                format!(
                    "{}: not found here (pilot.command must be the path compute nodes see)",
                    exe.display()
                ),
            );
        }
    }
    if let Some(u) = &site.pilot.server_url {
        check_reachable(r, u).await;
    }
}

/// A TCP connection to the address compute nodes are told to use.
async fn check_reachable(r: &mut Report, url: &str) {
    let hostport = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let target = if hostport.contains(':') {
        hostport.clone()
    } else if url.starts_with("https://") {
        format!("{hostport}:443")
    } else {
        format!("{hostport}:80")
    };
    let conn = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(target.clone()),
    )
    .await;
    match conn {
        Ok(Ok(_)) => r.add(
            Level::Ok,
            "pilot.server_url",
            format!("{target} accepts connections from this machine"),
        ),
        Ok(Err(e)) => r.add(
            Level::Fail,
            "pilot.server_url",
            format!("{target}: {e} (pilots are told to connect there)"),
        ),
        Err(_) => r.add(
            Level::Fail,
            "pilot.server_url",
            format!("{target}: no answer within 3 s (a firewall?)"),
        ),
    }
}
