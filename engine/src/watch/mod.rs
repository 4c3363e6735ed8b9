//! `beamflow watch`: a file trigger. New files in a directory that match a
//! pattern start runs of a flow once they are complete ([`settle`]), one
//! run per file or per batch of N files, each file exactly once, across
//! restarts ([`state`]).
//!
//! Files are noticed through inotify (close-write and rename events) with a
//! slow rescan behind it, or, with `--poll`, by a stat scan alone — for
//! GPFS, Lustre and NFS, where inotify does not see other hosts' writes.
//! Either way the same rule decides when a file is complete. Files already
//! in the directory when the trigger starts, and not recorded as seen,
//! count as new.

pub mod settle;
pub mod state;

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use globset::{Glob, GlobMatcher};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use crate::api::History;
use settle::{stat, Settle};
use state::{Batch, State};

/// What to watch and what to start.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub dir: PathBuf,
    /// Flow name, or a flow file (registered first).
    pub flow: String,
    /// Glob on file names (`*.h5`); with `recursive`, on the path below `dir`.
    pub pattern: String,
    pub recursive: bool,
    /// Files per run.
    pub batch: usize,
    /// Quiet time before a closed file counts as complete.
    pub settle: Duration,
    /// Start a run for a partial batch whose oldest file has waited this long.
    pub flush_after: Option<Duration>,
    /// The run's input (default: `file`, or `files` with a batch).
    pub input: Option<Input>,
    /// Scan every interval instead of using inotify.
    pub poll: Option<Duration>,
    /// The trigger's state file.
    pub state: PathBuf,
    /// Stop after starting this many runs (tests, one-shot ingestion).
    pub max_runs: Option<usize>,
    /// A flow to start when the runs started so far add up to enough.
    pub then: Option<FollowUp>,
}

/// A follow-up flow (SSX-Prime after 1,000 hits): started once each time
/// the runs this trigger started — since the last follow-up — add up to
/// `threshold` in the output `steps.STEP.outputs.KEY` (summed over their
/// succeeded runs; a run without it adds 0). Its input template also sees
/// `runs` (their ids) and `total`.
#[derive(Clone, Debug)]
pub struct FollowUp {
    /// Flow name, or a flow file (registered first).
    pub flow: String,
    pub step: String,
    pub key: String,
    pub threshold: f64,
    pub input: Input,
}

impl FollowUp {
    /// Reads `steps.STEP.outputs.KEY >= N`.
    pub fn parse_when(s: &str) -> Result<(String, String, f64), String> {
        let bad = || format!("`{s}`: write steps.STEP.outputs.KEY >= NUMBER");
        let (lhs, rhs) = s.split_once(">=").ok_or_else(bad)?;
        let threshold: f64 = rhs.trim().parse().map_err(|_| bad())?;
        match lhs.trim().split('.').collect::<Vec<_>>()[..] {
            ["steps", step, "outputs", key] if !step.is_empty() && !key.is_empty() => {
                Ok((step.to_string(), key.to_string(), threshold))
            }
            _ => Err(bad()),
        }
    }
}

/// How a run's input is made from its files; templates (minijinja) see
/// `file` (the first), `files`, `count` and `dir`.
#[derive(Clone, Debug)]
pub enum Input {
    /// One template that renders to a JSON object (`--input-template`).
    Json(String),
    /// Input name → value, strings rendered as templates and typed by the
    /// flow's schema (a `[[trigger]]` table's `input`).
    Fields(serde_json::Map<String, Value>),
}

impl WatchSpec {
    /// The watch a flow's `[[trigger]]` table asks the server for.
    pub fn from_trigger(flow: &str, t: &crate::flow::TriggerSpec, home: &Path) -> WatchSpec {
        let secs = Duration::from_secs_f64;
        let mut w = WatchSpec {
            dir: PathBuf::from(&t.dir),
            flow: flow.to_string(),
            pattern: t.pattern.clone(),
            recursive: t.recursive,
            batch: t.batch,
            settle: secs(t.settle_s),
            flush_after: t.flush_after_s.map(secs),
            input: (!t.input.is_empty()).then(|| Input::Fields(t.input.clone())),
            poll: t.poll_s.map(secs),
            state: PathBuf::new(),
            max_runs: None,
            then: None,
        };
        w.state = default_state(home, &w);
        w
    }
}

/// Where a trigger's runs go: the server's core, for the triggers the
/// server runs, or the server's HTTP API, for `beamflow watch`. Either way
/// a run is checked and stored like any other.
pub trait Submit: Clone + Send + Sync + 'static {
    /// The name `flow` is registered under: itself, or — for a flow file —
    /// the name it declares (registering it first).
    fn flow_name(&self, flow: &str) -> impl Future<Output = anyhow::Result<String>> + Send;
    /// Starts a run of `flow` with `input`; the ids of the runs started.
    fn submit(
        &self,
        flow: &str,
        input: Value,
    ) -> impl Future<Output = anyhow::Result<Vec<u64>>> + Send;
    /// The runs of `flow` the server has, newest first, with their attempts.
    fn history(&self, flow: &str) -> impl Future<Output = anyhow::Result<History>> + Send;
}

/// What a trigger has to say: what it watches, the runs it started, the
/// follow-ups, the trouble it met.
#[derive(Debug)]
pub enum Notice<'a> {
    /// It started watching (a line for people).
    Watching(String),
    /// A run started for `files`; `recovered` when it was found or
    /// submitted after a restart.
    Started {
        runs: &'a [u64],
        files: &'a [PathBuf],
        recovered: bool,
        line: String,
    },
    /// A follow-up run of `flow` after runs totalling `total`.
    FollowUp {
        flow: &'a str,
        runs: &'a [u64],
        total: f64,
        line: String,
    },
    /// Something went wrong; the trigger tries again.
    Warning(String),
    /// Interrupted, after starting this many runs in all.
    Stopped { runs: usize },
}

/// Where a trigger's [`Notice`]s go: the terminal of `beamflow watch`, or
/// the server's log ([`Log`]).
pub trait Say: Send + Sync + 'static {
    /// `trigger` names the trigger's flow and directory.
    fn say(&self, trigger: &str, n: Notice);
    /// Whether Ctrl-C ends the trigger (a command in a terminal does; the
    /// server's triggers end with the server).
    fn interactive(&self) -> bool;
}

/// The server's log.
#[derive(Clone, Copy, Debug)]
pub struct Log;

impl Say for Log {
    fn say(&self, trigger: &str, n: Notice) {
        match n {
            Notice::Watching(line) => tracing::info!("{line}"),
            Notice::Started { line, .. } => tracing::info!("trigger {trigger}: {line}"),
            Notice::FollowUp { line, .. } => tracing::info!("trigger {trigger}: {line}"),
            Notice::Warning(what) => tracing::warn!("trigger {trigger}: {what}"),
            Notice::Stopped { .. } => {}
        }
    }

    fn interactive(&self) -> bool {
        false
    }
}

/// The default state file of a trigger: one per directory, flow and pattern.
pub fn default_state(home: &Path, spec: &WatchSpec) -> PathBuf {
    let dir = std::fs::canonicalize(&spec.dir).unwrap_or_else(|_| spec.dir.clone());
    let key = format!("{}\n{}\n{}", dir.display(), spec.flow, spec.pattern);
    let h = blake3::hash(key.as_bytes()).to_hex();
    home.join("watch").join(format!("{}.sqlite", &h[..16]))
}

/// The run input for `files` (`extra`: more template variables).
fn render(
    input: &Input,
    dir: &Path,
    files: &[PathBuf],
    extra: minijinja::Value,
) -> anyhow::Result<Value> {
    let env = minijinja::Environment::new();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let ctx = minijinja::context! {
        file => names.first().cloned().unwrap_or_default(),
        files => names,
        count => files.len(),
        dir => dir.display().to_string(),
        ..extra
    };
    match input {
        Input::Json(template) => {
            let text = env
                .render_str(template, ctx)
                .map_err(|e| anyhow!("--input-template: {e}"))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("--input-template gives `{text}`, not JSON: {e}"))?;
            anyhow::ensure!(
                v.is_object(),
                "--input-template gives `{text}`, not a JSON object"
            );
            Ok(v)
        }
        Input::Fields(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(t) => env
                    .render_str(t, ctx.clone())
                    .map(|r| (k.clone(), Value::String(r)))
                    .map_err(|e| anyhow!("trigger input `{k}`: {e}")),
                other => Ok((k.clone(), other.clone())),
            })
            .collect::<anyhow::Result<serde_json::Map<_, _>>>()
            .map(Value::Object),
    }
}

/// Whether the server's stored `input` is the one we submitted: the server
/// fills in defaults and types values by the flow's schema (numbers, lists
/// from their JSON text), so every key we gave must match after that.
fn same_input(ours: &Value, stored: &Value) -> bool {
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::String(s), other) if !other.is_string() => {
                serde_json::from_str::<Value>(s).is_ok_and(|v| same(&v, other))
                    || other
                        .as_f64()
                        .is_some_and(|y| s.trim().parse::<f64>().ok() == Some(y))
                    || other.as_bool().is_some_and(|y| s.trim() == y.to_string())
            }
            (x, y) => x == y,
        }
    }
    let (Some(a), Some(b)) = (ours.as_object(), stored.as_object()) else {
        return false;
    };
    a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
}

struct Trigger<S, Y> {
    spec: WatchSpec,
    matcher: GlobMatcher,
    client: S,
    flow: String,
    input: Input,
    state: State,
    known: HashSet<PathBuf>,
    settle: Settle,
    started: usize,
    say: Y,
    /// The follow-up flow's registered name.
    then_flow: Option<String>,
}

impl<S: Submit, Y: Say> Trigger<S, Y> {
    /// The trigger's name in what it says: its flow and directory.
    fn name(&self) -> String {
        format!("{} ({})", self.flow, self.spec.dir.display())
    }

    fn matches(&self, path: &Path) -> bool {
        let rel = if self.spec.recursive {
            path.strip_prefix(&self.spec.dir).unwrap_or(path)
        } else {
            if path.parent() != Some(self.spec.dir.as_path()) {
                return false;
            }
            match path.file_name() {
                Some(n) => Path::new(n),
                None => return false,
            }
        };
        self.matcher.is_match(rel)
    }

    /// Every matching file below the directory not yet recorded.
    fn scan(&mut self, now: Instant) {
        let mut stack = vec![self.spec.dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() && self.spec.recursive => stack.push(p),
                    Ok(t) if t.is_file() && !self.known.contains(&p) && self.matches(&p) => {
                        if let Some(s) = stat(&p) {
                            self.settle.scanned(&p, s, now);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn event(&mut self, ev: notify::Event, now: Instant) {
        let writing = match ev.kind {
            EventKind::Create(CreateKind::File | CreateKind::Any) => true,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => true,
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => false,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                // paths = [from, to]: only the new name is a candidate.
                if let Some(to) = ev.paths.get(1) {
                    if !self.known.contains(to) && self.matches(to) {
                        self.settle.event(to, false, now);
                    }
                }
                return;
            }
            _ => return,
        };
        for p in &ev.paths {
            if !self.known.contains(p) && self.matches(p) {
                self.settle.event(p, writing, now);
            }
        }
    }

    /// Records files that are complete, then starts every full batch (and a
    /// partial one that waited `flush_after`).
    async fn advance(&mut self, now: Instant) -> anyhow::Result<()> {
        for (p, s) in self.settle.ready(now, stat) {
            self.state.complete(&p, s)?;
            self.known.insert(p);
        }
        loop {
            if self.spec.max_runs.is_some_and(|m| self.started >= m) {
                return Ok(());
            }
            let (queued, oldest) = self.state.queued()?;
            let waited = oldest.map(|us| {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0);
                Duration::from_micros((now_us - us).max(0) as u64)
            });
            let flush = matches!((self.spec.flush_after, waited), (Some(f), Some(w)) if w >= f);
            let take = if queued.len() >= self.spec.batch {
                self.spec.batch
            } else if flush && !queued.is_empty() {
                queued.len()
            } else {
                return Ok(());
            };
            let mut files = queued[..take].to_vec();
            files.sort();
            let input = render(
                &self.input,
                &self.spec.dir,
                &files,
                minijinja::Value::UNDEFINED,
            )?;
            let b = self.state.form(&files, &input)?;
            self.submit(b).await?;
        }
    }

    async fn submit(&mut self, b: Batch) -> anyhow::Result<()> {
        let ids = self.client.submit(&self.flow, b.input.clone()).await?;
        self.state.submitted(b.id, &ids)?;
        self.started += 1;
        self.say(&b, &ids, "");
        Ok(())
    }

    fn warn(&self, what: &str) {
        self.say
            .say(&self.name(), Notice::Warning(what.to_string()));
    }

    fn say(&self, b: &Batch, ids: &[u64], how: &str) {
        let what = match &b.files[..] {
            [one] => one.display().to_string(),
            many => format!(
                "{} files ({} … {})",
                many.len(),
                many.first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                many.last()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        };
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let line = format!("run {} ← {what}{how}", list.join(","));
        let n = Notice::Started {
            runs: ids,
            files: &b.files,
            recovered: !how.is_empty(),
            line,
        };
        self.say.say(&self.name(), n);
    }

    /// Batches recorded but not known submitted when the trigger last
    /// stopped: found on the server, or submitted now.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let open = self.state.unsubmitted()?;
        if open.is_empty() {
            return Ok(());
        }
        let runs = self.client.history(&self.flow).await?.runs;
        let mut claimed = self.state.claimed_runs()?;
        for b in open {
            let found = runs
                .iter()
                .filter(|r| !claimed.contains(&r.id) && same_input(&b.input, &r.input))
                .map(|r| r.id)
                .min();
            match found {
                Some(id) => {
                    self.state.submitted(b.id, &[id])?;
                    claimed.insert(id);
                    self.started += 1;
                    self.say(&b, &[id], " (found on the server after a restart)");
                }
                None => self.submit(b).await?,
            }
        }
        Ok(())
    }

    /// Tallies the batches whose runs have finished, then starts the
    /// follow-up if their total reached the threshold.
    async fn follow_up(&mut self) -> anyhow::Result<()> {
        let (Some(f), Some(then)) = (self.spec.then.clone(), self.then_flow.clone()) else {
            return Ok(());
        };
        let open = self.state.untallied()?;
        if !open.is_empty() {
            let History { runs, attempts } = self.client.history(&self.flow).await?;
            let state: std::collections::HashMap<u64, &str> =
                runs.iter().map(|r| (r.id, r.state.as_str())).collect();
            let value = |run: u64| -> f64 {
                attempts
                    .iter()
                    .filter(|a| a.run_id == run && a.step == f.step && a.state == "succeeded")
                    .filter_map(|a| a.outputs.as_ref()?.get(&f.key)?.as_f64())
                    .next_back()
                    .unwrap_or(0.0)
            };
            for (batch, ids) in open {
                let done = ids
                    .iter()
                    .all(|i| matches!(state.get(i), Some(&("succeeded" | "failed" | "cancelled"))));
                if done {
                    let total = ids
                        .iter()
                        .filter(|i| state.get(i) == Some(&"succeeded"))
                        .map(|&i| value(i))
                        .sum();
                    self.state.tally(batch, total)?;
                }
            }
        }
        // Oldest first, one follow-up each time the running sum reaches
        // the threshold; what is left waits for more runs.
        let (mut total, mut group) = (0.0, Vec::new());
        for b in self.state.uncovered()? {
            total += b.total;
            group.push(b);
            if total < f.threshold {
                continue;
            }
            let ids: Vec<i64> = group.iter().map(|b| b.id).collect();
            let runs: Vec<u64> = group.iter().flat_map(|b| b.runs.iter().copied()).collect();
            let files: Vec<PathBuf> = group.iter().flat_map(|b| b.files.iter().cloned()).collect();
            let input = render(
                &f.input,
                &self.spec.dir,
                &files,
                minijinja::context! { runs => runs, total => total },
            )?;
            let id = self.state.form_followup(&ids, &input)?;
            let started = self.client.submit(&then, input).await?;
            self.state.followup_submitted(id, &started)?;
            self.say_followup(&then, &started, total, runs.len(), "");
            (total, group) = (0.0, Vec::new());
        }
        Ok(())
    }

    fn say_followup(&self, then: &str, ids: &[u64], total: f64, runs: usize, how: &str) {
        let line = format!(
            "follow-up {then}: run {} after {runs} runs totalling {total}{how}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let n = Notice::FollowUp {
            flow: then,
            runs: ids,
            total,
            line,
        };
        self.say.say(&self.flow, n);
    }

    /// Follow-ups recorded but not known submitted: found on the server,
    /// or submitted now.
    async fn recover_followups(&mut self) -> anyhow::Result<()> {
        let Some(then) = self.then_flow.clone() else {
            return Ok(());
        };
        let open = self.state.unsubmitted_followups()?;
        if open.is_empty() {
            return Ok(());
        }
        let runs = self.client.history(&then).await?.runs;
        for (id, input) in open {
            match runs.iter().find(|r| same_input(&input, &r.input)) {
                Some(r) => self.state.followup_submitted(id, &[r.id])?,
                None => {
                    let ids = self.client.submit(&then, input).await?;
                    self.state.followup_submitted(id, &ids)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs the trigger until interrupted (or `max_runs` runs are started).
pub async fn watch<S: Submit, Y: Say>(spec: WatchSpec, client: S, say: Y) -> anyhow::Result<()> {
    anyhow::ensure!(spec.batch >= 1, "--batch must be at least 1");
    let dir = std::fs::canonicalize(&spec.dir)
        .with_context(|| format!("{}: cannot watch", spec.dir.display()))?;
    anyhow::ensure!(dir.is_dir(), "{}: not a directory", dir.display());
    let matcher = Glob::new(&spec.pattern)
        .map_err(|e| anyhow!("--pattern {}: {e}", spec.pattern))?
        .compile_matcher();
    let input = spec.input.clone().unwrap_or_else(|| {
        Input::Json(if spec.batch == 1 {
            r#"{"file": "{{ file }}"}"#.into()
        } else {
            r#"{"files": {{ files | tojson }}}"#.into()
        })
    });
    render(
        &input,
        &dir,
        &[dir.join("example")],
        minijinja::Value::UNDEFINED,
    )?;
    let mut then_flow = None;
    if let Some(f) = &spec.then {
        render(
            &f.input,
            &dir,
            &[dir.join("example")],
            minijinja::context! { runs => [1], total => 1.0 },
        )?;
        then_flow = Some(client.flow_name(&f.flow).await?);
    }
    let flow = client.flow_name(&spec.flow).await?;
    let state = State::open(&spec.state)?;
    let known = state.known()?;
    let mut t = Trigger {
        settle: Settle::new(spec.settle),
        spec: WatchSpec { dir, ..spec },
        matcher,
        client,
        flow,
        input,
        known,
        state,
        started: 0,
        say,
        then_flow,
    };
    t.recover().await?;
    t.recover_followups().await?;
    // inotify first, then the scan: a file written in between is seen twice,
    // never missed.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = match t.spec.poll {
        Some(_) => None,
        None => {
            let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
                let _ = tx.send(e);
            })
            .context("inotify (use --poll on file systems without it)")?;
            let mode = if t.spec.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            w.watch(&t.spec.dir, mode)
                .with_context(|| format!("{}: cannot watch (use --poll)", t.spec.dir.display()))?;
            Some(w)
        }
    };
    t.scan(Instant::now());
    {
        let line = format!(
            "watching {} for {} ({}, settle {:?}{}): flow {}",
            t.spec.dir.display(),
            t.spec.pattern,
            match t.spec.poll {
                Some(p) => format!("scan every {p:?}"),
                None => "inotify".into(),
            },
            t.spec.settle,
            if t.spec.batch > 1 {
                format!(", {} files a run", t.spec.batch)
            } else {
                String::new()
            },
            t.flow
        );
        t.say.say(&t.name(), Notice::Watching(line));
    }
    // The settle clock is checked four times per settle time; a scan runs
    // at the poll interval, or every 10 s behind inotify (missed events,
    // queue overflows).
    let tick = (t.spec.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
    let rescan = t.spec.poll.unwrap_or(Duration::from_secs(10));
    let mut last_scan = Instant::now();
    let mut last_tally = Instant::now();
    let (mut stalled, mut backoff, mut pause_until) =
        (false, Duration::from_secs(1), Instant::now());
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if t.spec.max_runs.is_some_and(|m| t.started >= m) {
            return Ok(());
        }
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                if now.duration_since(last_scan) >= rescan {
                    t.scan(now);
                    last_scan = now;
                }
                if now < pause_until {
                    continue;
                }
                // The server may be restarting: what could not be submitted
                // stays recorded and is submitted (or found) once it answers.
                let step = async {
                    if stalled {
                        t.recover().await?;
                        t.recover_followups().await?;
                    }
                    t.advance(now).await?;
                    if t.spec.then.is_some() && now.duration_since(last_tally) >= Duration::from_secs(1) {
                        t.follow_up().await?;
                        last_tally = now;
                    }
                    anyhow::Ok(())
                };
                match step.await {
                    Ok(()) => {
                        stalled = false;
                        backoff = Duration::from_secs(1);
                    }
                    Err(e) => {
                        t.warn(&format!("{e:#}; trying again in {backoff:?}"));
                        stalled = true;
                        pause_until = now + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            Some(ev) = rx.recv() => {
                match ev {
                    Ok(ev) => t.event(ev, Instant::now()),
                    // An overflowed queue: rescan now.
                    Err(e) => {
                        tracing::warn!("inotify: {e}; rescanning");
                        t.scan(Instant::now());
                    }
                }
            }
            _ = tokio::signal::ctrl_c(), if t.say.interactive() => {
                let runs = t.state.runs_started()?;
                t.say.say(&t.name(), Notice::Stopped { runs });
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const U: minijinja::Value = minijinja::Value::UNDEFINED;

    #[test]
    fn follow_up_conditions() {
        assert_eq!(
            FollowUp::parse_when("steps.index.outputs.hits >= 1000"),
            Ok(("index".into(), "hits".into(), 1000.0))
        );
        assert!(FollowUp::parse_when("hits >= 1000").is_err());
        assert!(FollowUp::parse_when("steps.index.outputs.hits > 1000").is_err());
        let v = render(
            &Input::Json(
                r#"{"runs": {{ runs | tojson }}, "total": {{ total }}, "n": {{ count }}}"#.into(),
            ),
            Path::new("/d"),
            &[PathBuf::from("/d/a")],
            minijinja::context! { runs => [3, 4], total => 1200.0 },
        )
        .unwrap();
        assert_eq!(v, json!({"runs": [3, 4], "total": 1200.0, "n": 1}));
    }

    #[test]
    fn templates_and_stored_inputs() {
        let d = Path::new("/data");
        let f = [PathBuf::from("/data/a.h5"), PathBuf::from("/data/b.h5")];
        let j = |t: &str| Input::Json(t.into());
        let v = render(
            &j(r#"{"frames": "{{ file }}", "n": {{ count }}}"#),
            d,
            &f,
            U,
        )
        .unwrap();
        assert_eq!(v, json!({"frames": "/data/a.h5", "n": 2}));
        let v = render(&j(r#"{"files": {{ files | tojson }}}"#), d, &f, U).unwrap();
        assert_eq!(v["files"][1], "/data/b.h5");
        let e = render(&j("{{ file }}"), d, &f, U).unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = render(&j("[1]"), d, &f, U).unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
        let fields = json!({
            "frames": "{{ file }}",
            "n": "{{ count }}",
            "all": "{{ files | tojson }}",
            "dark": 10
        });
        let v = render(
            &Input::Fields(fields.as_object().unwrap().clone()),
            d,
            &f,
            U,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"frames": "/data/a.h5", "n": "2", "all": "[\"/data/a.h5\",\"/data/b.h5\"]", "dark": 10})
        );
        // As the server stores it: typed by the schema, defaults added.
        let stored = json!({
            "frames": "/data/a.h5",
            "n": 2,
            "all": ["/data/a.h5", "/data/b.h5"],
            "dark": 10.0,
            "x": 0
        });
        assert!(same_input(&v, &stored));
        assert!(!same_input(&json!({"frames": "/data/b.h5"}), &stored));
        assert!(!same_input(&json!({"n": "3"}), &stored));
    }
}
