//! `beamflow alloc …`: allocation queues that submit pilot jobs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::Client;
use super::render::table;
use super::Ctx;
use crate::alloc::{QueueSpec, Reservation};
use crate::api::LogQuery;
use crate::batch::script::{JobRequest, PilotCommand};
use crate::site::{fmt_walltime, parse_walltime, SiteConfig};
use crate::util::{fmt_ts, now_us};

#[derive(Subcommand)]
pub enum AllocCmd {
    /// Create an allocation queue: the server submits pilot jobs to the
    /// site's scheduler when tasks for the target wait, within the limits.
    Add(AddArgs),
    /// Allocation queues and their jobs.
    List,
    /// Stop submitting (jobs already submitted carry on).
    Pause { id: u64 },
    /// Submit again; clears failure counts and back-off.
    Resume { id: u64 },
    /// Remove a queue; with jobs still queued or running, only with --cancel.
    Remove {
        id: u64,
        /// Cancel the queue's jobs.
        #[arg(long)]
        cancel: bool,
    },
    /// What the allocation manager did and why (submissions, failures, pauses).
    Log {
        /// Only this queue.
        id: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print the job script a queue would submit (no server needed).
    Script(ScriptArgs),
}

#[derive(Args)]
pub struct Shape {
    /// Site config: a name from site-configs/ or a path.
    #[arg(long)]
    site: String,
    /// Target of the site (cpu, gpu, realtime, debug…).
    #[arg(long)]
    target: String,
    /// Nodes per job (default: the target's).
    #[arg(long)]
    nodes: Option<u32>,
    /// Walltime per job, HH:MM:SS or e.g. 30m (default: the target's).
    #[arg(long)]
    walltime: Option<String>,
    /// Pilots leave after this long without work ("0s": stay until walltime).
    #[arg(long, default_value = "5m")]
    idle_timeout: String,
    /// Submit into this reservation (Slurm --reservation, PBS reservation queue).
    #[arg(long)]
    reservation: Option<String>,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    shape: Shape,
    /// Jobs queued or running at once.
    #[arg(long, default_value_t = 4)]
    max_jobs: u32,
    /// Nodes over all jobs at once.
    #[arg(long)]
    max_nodes: Option<u32>,
    /// Jobs waiting in the scheduler's queue at once.
    #[arg(long, default_value_t = 1)]
    backlog: u32,
    /// Reservation window START..END: RFC 3339 times (UTC), `now`, or `+2h`
    /// from now; either side may be empty.
    #[arg(long, requires = "reservation")]
    window: Option<String>,
    /// Pilot nodes kept alive in the reservation during the window.
    #[arg(long, default_value_t = 0, requires = "reservation")]
    warm: u32,
}

#[derive(Args)]
pub struct ScriptArgs {
    #[command(flatten)]
    shape: Shape,
}

impl Shape {
    /// The queue's resolved target and per-job sizes, from a site config
    /// file found here.
    fn resolve(&self) -> anyhow::Result<(crate::site::EffectiveTarget, u32, u64, u64)> {
        let path = crate::site::find(&self.site)?;
        let site = SiteConfig::load(&path)?;
        self.sized(&site, &path.display().to_string())
    }

    /// As [`Shape::resolve`], but a site an agent runs is resolved from the
    /// config that agent sent the server (the file lives at its facility),
    /// and only a name neither knows is an error.
    async fn resolve_at(
        &self,
        client: &Client,
    ) -> anyhow::Result<(crate::site::EffectiveTarget, u32, u64, u64)> {
        let by_name = !self.site.contains('/') && !self.site.ends_with(".toml");
        if by_name {
            let sites = client.sites().await?;
            if let Some(s) = sites
                .iter()
                .find(|s| s.name == self.site && s.run_by == "agent")
            {
                let from = format!("site `{}` (from its agent on {})", s.name, agent_host(s));
                return self.sized(&s.config, &from);
            }
            if let Err(e) = crate::site::find(&self.site) {
                let agents: Vec<&str> = sites
                    .iter()
                    .filter(|s| s.run_by == "agent")
                    .map(|s| s.name.as_str())
                    .collect();
                anyhow::bail!(
                    "unknown site `{}`: no agent of that name has connected to the server ({}),                      and {e}",
                    self.site,
                    if agents.is_empty() {
                        "it knows none".to_string()
                    } else {
                        format!("it knows {}", agents.join(", "))
                    }
                );
            }
        }
        self.resolve()
    }

    fn sized(
        &self,
        site: &SiteConfig,
        from: &str,
    ) -> anyhow::Result<(crate::site::EffectiveTarget, u32, u64, u64)> {
        let t = site
            .effective(&self.target)
            .with_context(|| from.to_string())?;
        let nodes = self.nodes.unwrap_or(t.nodes);
        let walltime_s = match &self.walltime {
            Some(w) => parse_walltime(w).map_err(|e| anyhow::anyhow!("--walltime: {e}"))?,
            None => t.walltime_s,
        };
        let idle = crate::units::parse_duration(&self.idle_timeout)
            .map_err(|e| anyhow::anyhow!("--idle-timeout: {e}"))? as u64;
        Ok((t, nodes, walltime_s, idle))
    }
}

impl AllocCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        self.act(cx).await?;
        Ok(ExitCode::SUCCESS)
    }

    async fn act(self, cx: &Ctx) -> anyhow::Result<()> {
        let home = &cx.home;
        match self {
            AllocCmd::Script(a) => {
                let (target, nodes, walltime_s, idle) = a.shape.resolve()?;
                let url = match cx.url.clone().or_else(|| target.pilot.server_url.clone()) {
                Some(u) => u,
                None => Client::discover(home, None, Some(String::new()), None)
                    .map(|c| c.url)
                    .context("the pilots need the server's URL: pass --url, set pilot.server_url in the site config, or start the server first")?,
            };
                let exe = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "beamflow".into());
                let reservation = a.shape.reservation.clone();
                // The certificate the pilots pin: the one named, else this
                // home's (the server's, when the home is shared with it).
                let cert = cx
                    .server_cert
                    .clone()
                    .or_else(|| Some(crate::tls::home_cert(home)).filter(|p| p.is_file()));
                let pilot = PilotCommand::for_target(
                    &target,
                    &exe,
                    &url,
                    crate::home::pilot_token_file(home),
                    crate::alloc::serves(&target.target, reservation.is_some()),
                    idle,
                )
                .pinning(cert);
                if pilot.url.starts_with("https://") && pilot.server_cert.is_none() {
                    anyhow::bail!(
                        "the pilots connect to {} and must pin the server's certificate: pass \
                     --server-cert (the server's BEAMFLOW_HOME/{})",
                        pilot.url,
                        crate::tls::CERT_FILE
                    );
                }
                let req = JobRequest {
                    name: format!("bf-{}", target.target),
                    nodes,
                    walltime_s,
                    reservation,
                    dir: home.join("alloc").join("script"),
                    pilot,
                    target,
                };
                let script = req.render()?;
                cx.out.show(&json!({ "script": script }), |_| {
                    script.trim_end().to_string()
                });
                Ok(())
            }
            AllocCmd::Add(a) => {
                let client = cx.client()?;
                let (target, nodes, walltime_s, idle) = a.shape.resolve_at(&client).await?;
                let reservation = match &a.shape.reservation {
                    None => None,
                    Some(name) => {
                        let (start_us, end_us) = match &a.window {
                            Some(w) => parse_window(w, now_us())?,
                            None => (None, None),
                        };
                        Some(Reservation {
                            name: name.clone(),
                            start_us,
                            end_us,
                            warm: a.warm,
                        })
                    }
                };
                let spec = QueueSpec {
                    target,
                    max_jobs: a.max_jobs,
                    max_nodes: a.max_nodes,
                    backlog: a.backlog,
                    nodes_per_job: nodes,
                    walltime_s,
                    idle_timeout_s: idle,
                    reservation,
                };
                let r = client.add_queue(&spec).await?;
                cx.out.show(&r, |r| {
                    format!(
                        "allocation queue {}: {}",
                        r.id,
                        crate::alloc::queue::describe(&spec)
                    )
                });
                Ok(())
            }
            AllocCmd::List => {
                let qs = cx.client()?.queues().await?;
                cx.out.show(&qs, |qs| {
                    let mut t = table(&[
                        "id",
                        "site/target",
                        "state",
                        "queued",
                        "running",
                        "ended",
                        "limits",
                        "jobs",
                    ]);
                    for q in qs {
                        let s = &q.spec;
                        let mut limits = format!(
                            "{} jobs × {} node{}, {}",
                            s.max_jobs,
                            s.nodes_per_job,
                            if s.nodes_per_job == 1 { "" } else { "s" },
                            fmt_walltime(s.walltime_s)
                        );
                        if let Some(r) = &s.reservation {
                            limits.push_str(&format!(", resv {} warm {}", r.name, r.warm));
                        }
                        let jobs: Vec<String> = q
                            .jobs
                            .iter()
                            .filter(|j| j.state != "ended")
                            .map(|j| format!("{} {}", j.job_id, j.state))
                            .collect();
                        let state = match &q.paused_reason {
                            Some(r) => format!("paused: {r}"),
                            None => q.state.clone(),
                        };
                        t.add_row(vec![
                            q.id.to_string(),
                            format!("{}/{}", s.target.site, s.target.target),
                            state,
                            q.queued_jobs.to_string(),
                            q.running_jobs.to_string(),
                            q.ended_jobs.to_string(),
                            limits,
                            jobs.join(", "),
                        ]);
                    }
                    t
                });
                Ok(())
            }
            AllocCmd::Pause { id } => {
                let m = cx.client()?.pause_queue(id).await?;
                cx.out.show(&m, |m| m.message.clone());
                Ok(())
            }
            AllocCmd::Resume { id } => {
                let m = cx.client()?.resume_queue(id).await?;
                cx.out.show(&m, |m| m.message.clone());
                Ok(())
            }
            AllocCmd::Remove { id, cancel } => {
                let m = cx.client()?.remove_queue(id, cancel).await?;
                cx.out.show(&m, |m| m.message.clone());
                Ok(())
            }
            AllocCmd::Log { id, limit } => {
                let q = LogQuery {
                    queue: id,
                    limit: Some(limit),
                };
                let rows = cx.client()?.alloc_log(&q).await?;
                cx.out.show(&rows, |rows| {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{}  queue {}  {:<5}  {}",
                                fmt_ts(r.at_us),
                                r.queue,
                                r.level,
                                r.message
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                Ok(())
            }
        }
    }
}

/// `START..END`, each side an RFC 3339 time (UTC), `now`, `+DURATION`, or empty.
pub fn parse_window(w: &str, now: i64) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let (a, b) = w
        .split_once("..")
        .ok_or_else(|| anyhow::anyhow!("--window `{w}`: write START..END, e.g. now..+8h"))?;
    let point = |s: &str| -> anyhow::Result<Option<i64>> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if s == "now" {
            return Ok(Some(now));
        }
        if let Some(d) = s.strip_prefix('+') {
            let secs = crate::units::parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--window `{w}`: {e}"))?;
            return Ok(Some(now + (secs * 1e6) as i64));
        }
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
            anyhow::anyhow!("--window `{w}`: `{s}` is not a time ({e}); write e.g. 2026-11-25T08:00:00Z, now or +2h")
        })?;
        let us = t
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as i64;
        Ok(Some(us))
    };
    let (start, end) = (point(a)?, point(b)?);
    if let (Some(x), Some(y)) = (start, end) {
        if y <= x {
            anyhow::bail!("--window `{w}`: the end is not after the start");
        }
    }
    Ok((start, end))
}

fn agent_host(s: &crate::api::SiteInfo) -> &str {
    s.agent.as_ref().map(|a| a.host.as_str()).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let now = 1_000_000_000_000_000;
        assert_eq!(
            parse_window("now..+2h", now).unwrap(),
            (Some(now), Some(now + 7_200_000_000))
        );
        assert_eq!(parse_window("..", now).unwrap(), (None, None));
        let (a, b) = parse_window("2026-11-25T08:00:00Z..2026-11-25T20:00:00Z", now).unwrap();
        assert_eq!(b.unwrap() - a.unwrap(), 12 * 3600 * 1_000_000);
        assert!(parse_window("+2h..now", now).is_err());
        assert!(parse_window("tomorrow", now).is_err());
    }
}
