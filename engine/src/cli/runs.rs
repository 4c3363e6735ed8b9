//! `beamflow run` and `beamflow runs …`: start runs, list them, show one
//! with its timing table, cancel, retry and wait.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{is_flow_file, Client};
use super::render::{dash, short, table, Out};
use super::report::timing_table;
use super::{done, duration, Ctx};
use crate::api::{AttemptRow, EventRow, RunDetail, RunExplain, RunFilter, RunRow, RunState};
use crate::report::RunTiming;
use crate::util::{fmt_secs, fmt_ts};

#[derive(Args)]
pub struct RunArgs {
    /// Flow name, or a path to a flow file (registered first).
    flow: String,
    /// Input as a JSON file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Input values, KEY=VALUE (repeatable; typed by the flow's input schema).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The flow's version (default: the newest registered).
    #[arg(long)]
    version: Option<u32>,
    /// Wait for the run to finish and print its timing table.
    #[arg(long)]
    wait: bool,
    /// Server and pilot in this process: no server needed. The run's
    /// store and files stay in HOME/local.
    #[arg(long)]
    local: bool,
}

#[derive(Subcommand)]
pub enum RunsCmd {
    /// The newest runs, with their state and how long they took.
    List {
        /// Only runs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<RunState>,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A run's steps, attempts and timing table.
    Show { id: u64 },
    /// Why a run's ready steps are not running: what each asks for (target,
    /// resources, walltime) and what each pilot says to it.
    Explain { id: u64 },
    /// Stop a run: its queued steps are withdrawn, its running ones stopped.
    Cancel { id: u64 },
    /// Re-run the failed or cancelled steps of a run.
    Retry { id: u64 },
    /// Wait until runs finish (exit 1 if any did not succeed).
    Wait {
        ids: Vec<u64>,
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
    },
}

impl RunArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let input = self.input()?;
        let is_file = is_flow_file(&self.flow);
        if self.local {
            anyhow::ensure!(
                is_file,
                "--local needs a flow file (a .toml path), got `{}`",
                self.flow
            );
            let local = super::local::Local::start(super::local::LocalOptions {
                home: Some(cx.home.join("local")),
                pilots: 1,
                cpus: None,
                prefetch: None,
                durability: crate::store::Durability::Normal,
                site: crate::site::SiteConfig::local(),
            })
            .await?;
            let res = self.submit(&local.client, input, true, cx.out).await;
            local.stop().await?;
            return res;
        }
        self.submit(&cx.client()?, input, self.wait, cx.out).await
    }

    /// `--input` with the `--set` values over it.
    fn input(&self) -> anyhow::Result<Value> {
        let mut input = match &self.input {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("{}: not valid JSON", p.display()))?
            }
            None => json!({}),
        };
        let sets = crate::flow::parse_set(&self.set).map_err(anyhow::Error::msg)?;
        let obj = input
            .as_object_mut()
            .ok_or_else(|| anyhow::anyhow!("--input must hold a JSON object"))?;
        obj.extend(sets);
        Ok(input)
    }

    /// `--set` values of `path` inputs made absolute: the pilot that reads
    /// them runs elsewhere, in another directory.
    fn absolute_paths(
        &self,
        spec: &crate::flow::FlowSpec,
        mut input: Value,
    ) -> anyhow::Result<Value> {
        let here = std::env::current_dir().context("the current directory")?;
        let set: Vec<&str> = self
            .set
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        for i in &spec.inputs {
            if i.ty != crate::flow::InputType::Path || !set.contains(&i.name.as_str()) {
                continue;
            }
            if let Some(Value::String(p)) = input.get_mut(&i.name) {
                if !p.is_empty() && !p.starts_with('~') && Path::new(p.as_str()).is_relative() {
                    *p = here.join(&*p).display().to_string();
                }
            }
        }
        Ok(input)
    }

    async fn submit(
        &self,
        c: &Client,
        input: Value,
        wait: bool,
        out: Out,
    ) -> anyhow::Result<ExitCode> {
        let name = if is_flow_file(&self.flow) {
            let r = c.register(Path::new(&self.flow)).await?;
            if r.changed {
                out.note(format!("registered flow {} v{}", r.name, r.version));
            }
            r.name
        } else {
            self.flow.clone()
        };
        let spec = c.flow(&name, self.version).await?.spec;
        let input = self.absolute_paths(&spec, input)?;
        let ids = c.submit(&name, self.version, vec![input]).await?;
        let id = ids[0];
        if !wait {
            out.show(&json!({ "run": id }), |_| {
                format!("run {id} queued (beamflow runs wait {id})")
            });
            return Ok(ExitCode::SUCCESS);
        }
        let runs = c.wait(&ids, !out.quiet(), None).await?;
        show_run(c, id, out).await?;
        if self.local {
            if let Some(r) = runs.first() {
                out.note(format!("the run's files: {}", r.dir));
            }
        }
        Ok(done(runs.iter().all(|r| r.state == RunState::Succeeded)))
    }
}

impl RunsCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let c = cx.client()?;
        match self {
            RunsCmd::List { state, flow, limit } => {
                let filter = RunFilter {
                    state,
                    flow,
                    limit: Some(limit),
                    ..Default::default()
                };
                let rows = c.runs(&filter).await?;
                cx.out.show(&rows, |rows| runs_table(rows));
                Ok(ExitCode::SUCCESS)
            }
            RunsCmd::Show { id } => {
                show_run(&c, id, cx.out).await?;
                Ok(ExitCode::SUCCESS)
            }
            RunsCmd::Explain { id } => {
                let e = c.explain(id).await?;
                cx.out.show(&e, explain_text);
                Ok(ExitCode::SUCCESS)
            }
            RunsCmd::Cancel { id } => {
                let m = c.cancel(id).await?;
                cx.out.show(&m, |m| m.message.clone());
                Ok(ExitCode::SUCCESS)
            }
            RunsCmd::Retry { id } => {
                let m = c.retry(id).await?;
                cx.out.show(&m, |m| m.message.clone());
                Ok(ExitCode::SUCCESS)
            }
            RunsCmd::Wait { ids, timeout } => {
                anyhow::ensure!(!ids.is_empty(), "name at least one run");
                let runs = c.wait(&ids, !cx.out.quiet(), timeout).await?;
                cx.out.show(&runs, |runs| {
                    runs.iter()
                        .map(|r| {
                            format!(
                                "run {} {}{}",
                                r.id,
                                r.state,
                                r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                Ok(done(runs.iter().all(|r| r.state == RunState::Succeeded)))
            }
        }
    }
}

fn runs_table(rows: &[RunRow]) -> comfy_table::Table {
    let mut t = table(&["run", "flow", "state", "created", "duration", "error"]);
    for r in rows {
        let dur = match r.finished_us {
            Some(f) => fmt_secs((f - r.created_us) as f64 / 1e6),
            None => "-".into(),
        };
        t.add_row(vec![
            r.id.to_string(),
            format!("{} v{}", r.flow, r.flow_version),
            r.state.to_string(),
            fmt_ts(r.created_us),
            dur,
            dash(r.error.as_deref().map(|e| short(e, 80)).as_deref()),
        ]);
    }
    t
}

/// `runs show --json`: the run's rows, its timing table's numbers, and
/// what its ready steps wait for.
#[derive(Serialize)]
struct Shown<'a> {
    run: &'a RunRow,
    attempts: &'a [AttemptRow],
    events: &'a [EventRow],
    timing: &'a RunTiming,
    waiting: Vec<Waiting>,
}

/// A ready step and why no pilot has taken it.
#[derive(Serialize)]
struct Waiting {
    step: String,
    reason: String,
}

fn explain_text(e: &RunExplain) -> String {
    if e.steps.is_empty() {
        return format!("run {}: no step is waiting or running", e.run);
    }
    let mut text = String::new();
    for s in &e.steps {
        let resources = s
            .resources
            .variants
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        text += &format!(
            "step {} (attempt {}): {} · target {} · {resources}{}\n",
            s.step,
            s.attempt,
            s.state,
            s.target,
            s.timeout_s
                .map_or(String::new(), |t| format!(" · timeout {}", fmt_secs(t)))
        );
        match (&s.waiting, s.pilot) {
            (Some(w), _) => text += &format!("  {w}\n"),
            (None, Some(p)) => text += &format!("  on pilot {p}\n"),
            (None, None) => {}
        }
        if !s.pilots.is_empty() {
            let mut t = table(&["pilot", "name", "takes it", "why"]);
            for p in &s.pilots {
                let takes = if p.takes { "yes" } else { "no" };
                t.add_row(vec![
                    p.pilot.to_string(),
                    p.name.clone(),
                    takes.into(),
                    p.why.clone(),
                ]);
            }
            text += &format!("{t}\n");
        }
    }
    text.trim_end().to_string()
}

/// A run's header, timing table and failed attempts.
pub async fn show_run(c: &Client, id: u64, out: Out) -> anyhow::Result<()> {
    let d: RunDetail = c.run(id).await?;
    let t = crate::report::timing(&d);
    let waiting = if d.run.state.is_finished() {
        vec![]
    } else {
        c.explain(id)
            .await?
            .steps
            .into_iter()
            .filter_map(|s| {
                s.waiting.map(|reason| Waiting {
                    step: s.step,
                    reason,
                })
            })
            .collect()
    };
    let shown = Shown {
        run: &d.run,
        attempts: &d.attempts,
        events: &d.events,
        timing: &t,
        waiting,
    };
    out.show(&shown, |s| {
        let r = s.run;
        let mut text = format!(
            "run {} · flow {} v{} · {}\ncreated {} · dir {}\ninput {}\n",
            r.id,
            r.flow,
            r.flow_version,
            r.state,
            fmt_ts(r.created_us),
            r.dir,
            r.input
        );
        if let Some(e) = &r.error {
            text += &format!("error: {e}\n");
        }
        text += &timing_table(s.timing).to_string();
        if !s.timing.moved.is_empty() {
            text += &format!("\n{}", super::report::moved_table(&s.timing.moved));
        }
        for w in &s.waiting {
            text += &format!(
                "\nstep {} is {} (beamflow runs explain {})",
                w.step, w.reason, r.id
            );
        }
        // Where each step went and why, when pilots of several sites served.
        let placed: Vec<&EventRow> = s.events.iter().filter(|e| e.kind == "placed").collect();
        if !placed.is_empty() {
            text += "\nplaced:";
            for e in placed {
                let step = s
                    .attempts
                    .iter()
                    .find(|a| Some(a.id) == e.attempt_id)
                    .map_or("?", |a| a.step.as_str());
                text += &format!(
                    "\n  {step} (attempt {}): {}",
                    e.attempt_id.unwrap_or(0),
                    e.detail.as_deref().unwrap_or("")
                );
            }
        }
        let failed: Vec<_> = s.attempts.iter().filter(|a| a.error.is_some()).collect();
        if !failed.is_empty() {
            text += "\nattempts with errors:";
            for a in failed {
                text += &format!(
                    "\n  {} #{} (attempt {}): {} — {}",
                    a.step,
                    a.number,
                    a.id,
                    a.state,
                    a.error.as_deref().unwrap_or("")
                );
            }
        }
        text
    });
    Ok(())
}
