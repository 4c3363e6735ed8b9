//! `beamflow watch DIR --flow F`: a file trigger on this machine that
//! submits through the server's HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::client::Client;
use super::render::Out;
use super::Ctx;
use crate::api::History;
use crate::watch::{FollowUp, Input, Notice, Say, Submit, WatchSpec};

#[derive(Args)]
pub struct WatchArgs {
    /// The directory the instrument writes to.
    dir: PathBuf,
    /// Flow name, or a flow file (registered first).
    #[arg(long)]
    flow: String,
    /// Glob on file names, e.g. `*.h5` (with --recursive: on the path below DIR).
    #[arg(long, default_value = "*")]
    pattern: String,
    /// Watch subdirectories too.
    #[arg(long)]
    recursive: bool,
    /// Files per run (one run per 512 images: --batch 512).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How long a closed file must stay unchanged to count as complete.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Start a run for a partial batch whose oldest file waited this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_after: Option<Duration>,
    /// The run input as a JSON template: {{ file }}, {{ files | tojson }},
    /// {{ count }}, {{ dir }} (default {"file": "{{ file }}"}, or
    /// {"files": [...]} with --batch).
    #[arg(long)]
    input_template: Option<String>,
    /// Scan at this interval instead of inotify (GPFS, Lustre, NFS).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll: Option<Duration>,
    /// State file (default: HOME/watch/<hash of dir, flow, pattern>.sqlite).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Stop after starting this many runs.
    #[arg(long)]
    max_runs: Option<usize>,
    /// A follow-up flow (name or file), started each time the runs started
    /// since the last one add up to --when.
    #[arg(long, requires = "when")]
    then: Option<String>,
    /// `steps.STEP.outputs.KEY >= N`: the output summed over those runs.
    #[arg(long, requires = "then")]
    when: Option<String>,
    /// The follow-up's input template: also {{ runs | tojson }} and {{ total }}
    /// (default {"files": [...]}).
    #[arg(long)]
    then_input_template: Option<String>,
}

impl WatchArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let then = match (self.then, self.when) {
            (Some(flow), Some(when)) => {
                let (step, key, threshold) =
                    FollowUp::parse_when(&when).map_err(|e| anyhow::anyhow!("--when {e}"))?;
                Some(FollowUp {
                    flow,
                    step,
                    key,
                    threshold,
                    input: Input::Json(
                        self.then_input_template
                            .unwrap_or_else(|| r#"{"files": {{ files | tojson }}}"#.into()),
                    ),
                })
            }
            _ => None,
        };
        let mut spec = WatchSpec {
            dir: self.dir,
            flow: self.flow,
            pattern: self.pattern,
            recursive: self.recursive,
            batch: self.batch,
            settle: self.settle,
            flush_after: self.flush_after,
            input: self.input_template.map(Input::Json),
            poll: self.poll,
            state: PathBuf::new(),
            max_runs: self.max_runs,
            then,
        };
        spec.state = self
            .state
            .unwrap_or_else(|| crate::watch::default_state(&cx.home, &spec));
        crate::watch::watch(spec, cx.client()?, Terminal(cx.out)).await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Submit for Client {
    async fn flow_name(&self, flow: &str) -> anyhow::Result<String> {
        Client::flow_name(self, flow).await
    }

    async fn submit(&self, flow: &str, input: Value) -> anyhow::Result<Vec<u64>> {
        Client::submit(self, flow, None, vec![input]).await
    }

    async fn history(&self, flow: &str) -> anyhow::Result<History> {
        Client::history(self, flow, 100_000).await
    }
}

/// What `beamflow watch` prints: a line per run (a JSON object with
/// `--json`), notes on stderr.
struct Terminal(Out);

impl Say for Terminal {
    fn say(&self, _trigger: &str, n: Notice) {
        match n {
            Notice::Watching(line) => self.0.note(line),
            Notice::Started {
                runs,
                files,
                recovered,
                line,
            } => self.0.record(
                &json!({"runs": runs, "files": files, "recovered": recovered}),
                line,
            ),
            Notice::FollowUp {
                flow,
                runs,
                total,
                line,
            } => self.0.record(
                &json!({"followup": flow, "runs": runs, "total": total}),
                line,
            ),
            Notice::Warning(what) => eprintln!("warning: {what}"),
            Notice::Stopped { runs } => self.0.note(format!("stopped: {runs} runs started")),
        }
    }

    fn interactive(&self) -> bool {
        true
    }
}
