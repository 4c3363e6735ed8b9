//! `beamflow report --flow NAME`, and the timing tables: one run's steps
//! (`runs show`, `run --wait`, the demo) and many runs of a flow.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use comfy_table::{Cell, CellAlignment, Table};
use serde_json::json;

use super::render::table;
use super::Ctx;
use crate::report::flow::{FlowReport, Spread};
use crate::report::{RunTiming, SitePair, StepTiming};
use crate::util::fmt_secs;

#[derive(Args)]
pub struct ReportArgs {
    /// The flow's name.
    #[arg(long)]
    flow: String,
    /// Only runs created since: a duration ago (`2h`, `3d`) or a time
    /// (`2026-12-01T08:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many of the newest runs.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Where the PNGs go (default: HOME/reports/FLOW).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// No PNGs.
    #[arg(long)]
    no_plots: bool,
}

impl ReportArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let since = self
            .since
            .as_deref()
            .map(since_us)
            .transpose()?
            .unwrap_or(0);
        let c = cx.client()?;
        // A flow that does not exist says so, rather than "no runs".
        c.flow(&self.flow, None).await?;
        let h = c.history(&self.flow, self.limit).await?;
        let r = crate::report::flow::summarise(&self.flow, h.runs, h.attempts, since);
        anyhow::ensure!(
            r.succeeded > 0,
            "flow {}: no succeeded runs to report on{}",
            self.flow,
            self.since.map_or(String::new(), |s| format!(" since {s}"))
        );
        let mut plots = Vec::new();
        if !self.no_plots {
            let out = self
                .out
                .clone()
                .unwrap_or_else(|| cx.home.join("reports").join(&self.flow));
            std::fs::create_dir_all(&out)
                .with_context(|| format!("{}: cannot create", out.display()))?;
            let box_png = out.join(format!("{}_runtimes.png", self.flow));
            let conc_png = out.join(format!("{}_concurrency.png", self.flow));
            crate::report::flow::boxplots(&r, &box_png)?;
            crate::report::flow::concurrency_plot(&r, &conc_png)?;
            plots = vec![box_png, conc_png];
        }
        cx.out.show(&json!({ "report": r, "plots": plots }), |_| {
            let mut text = format!(
                "flow {}: {} runs finished ({} succeeded, {} failed), at most {} at once\n{}",
                r.flow,
                r.runs,
                r.succeeded,
                r.failed,
                r.max_concurrent,
                flow_table(&r)
            );
            for p in &plots {
                text += &format!("\nplot: {}", p.display());
            }
            text
        });
        Ok(ExitCode::SUCCESS)
    }
}

/// `--since`: a duration ago or a time, as µs since the epoch.
fn since_us(s: &str) -> anyhow::Result<i64> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(d) => now - d,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow::anyhow!(
                "--since `{s}`: give a duration (2h, 3d) or a time (2026-12-01T08:00:00Z)"
            )
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

fn pct(part: f64, total: f64) -> String {
    if total > 0.0 {
        format!("{:.1} %", 100.0 * part / total)
    } else {
        "-".into()
    }
}

/// Data moved between places in a run, by site pair.
pub fn moved_table(pairs: &[SitePair]) -> Table {
    let mut table = table(&["moved from", "to", "moves", "bytes", "seconds", "MB/s"]);
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    for p in pairs {
        table.add_row(vec![
            Cell::new(&p.from),
            Cell::new(&p.to),
            right(p.moves.to_string()),
            right(p.bytes.to_string()),
            right(fmt_secs(p.seconds)),
            right(if p.seconds > 0.0 {
                format!("{:.1}", p.bytes as f64 / p.seconds / 1e6)
            } else {
                "-".into()
            }),
        ]);
    }
    table
}

/// Table 1 of the Patterns paper for one run.
pub fn timing_table(t: &RunTiming) -> Table {
    let mut table = table(&[
        "step",
        "action",
        "state",
        "tries",
        "queued",
        "backoff",
        "transfer",
        "compute",
        "publish",
        "retried",
        "overhead",
        "% overhead",
    ]);
    let num = |v: f64| Cell::new(fmt_secs(v)).set_alignment(CellAlignment::Right);
    // Back-off and retried time are blank where there was none, as the
    // action columns are outside a step's category.
    let some = |v: f64| {
        Cell::new(if v > 0.0 { fmt_secs(v) } else { String::new() })
            .set_alignment(CellAlignment::Right)
    };
    let time_in = |s: &StepTiming, c: &str| {
        if s.category == c {
            fmt_secs(s.action_s)
        } else {
            String::new()
        }
    };
    for s in &t.steps {
        table.add_row(vec![
            Cell::new(&s.step),
            Cell::new(&s.action),
            Cell::new(&s.state),
            Cell::new(s.tries).set_alignment(CellAlignment::Right),
            num(s.queued_s),
            some(s.backoff_s),
            Cell::new(time_in(s, "transfer")).set_alignment(CellAlignment::Right),
            Cell::new(time_in(s, "compute")).set_alignment(CellAlignment::Right),
            Cell::new(time_in(s, "publish")).set_alignment(CellAlignment::Right),
            some(s.retried_s),
            num(s.overhead_s),
            Cell::new(pct(s.overhead_s, s.total_s)).set_alignment(CellAlignment::Right),
        ]);
    }
    // A category no step belongs to stays blank rather than showing 0.
    let total_of = |c: &str, v: f64| {
        if t.steps.iter().any(|s| s.category == c) {
            fmt_secs(v)
        } else {
            String::new()
        }
    };
    table.add_row(vec![
        Cell::new("run total"),
        Cell::new(""),
        Cell::new(&t.state),
        Cell::new(""),
        num(t.queued_s),
        some(t.backoff_s),
        Cell::new(total_of("transfer", t.transfer_s)).set_alignment(CellAlignment::Right),
        Cell::new(total_of("compute", t.compute_s)).set_alignment(CellAlignment::Right),
        Cell::new(total_of("publish", t.publish_s)).set_alignment(CellAlignment::Right),
        some(t.retried_s),
        num(t.overhead_s),
        Cell::new(pct(t.overhead_s, t.total_s)).set_alignment(CellAlignment::Right),
    ]);
    table
}

fn spread(s: &Spread) -> String {
    format!(
        "{} ({} – {})",
        fmt_secs(s.median),
        fmt_secs(s.q1),
        fmt_secs(s.q3)
    )
}

/// Table 1 over runs: medians with quartiles in brackets.
pub fn flow_table(r: &FlowReport) -> Table {
    let mut t = table(&[
        "step",
        "kind",
        "runs",
        "runtime, median (q1 – q3)",
        "overhead, median (q1 – q3)",
        "queued, median",
        "backoff, median",
    ]);
    for s in &r.steps {
        t.add_row(vec![
            Cell::new(&s.step),
            Cell::new(&s.category),
            Cell::new(s.runs).set_alignment(CellAlignment::Right),
            Cell::new(spread(&s.runtime_s)).set_alignment(CellAlignment::Right),
            Cell::new(spread(&s.overhead_s)).set_alignment(CellAlignment::Right),
            Cell::new(fmt_secs(s.queued_s.median)).set_alignment(CellAlignment::Right),
            Cell::new(fmt_secs(s.backoff_s.median)).set_alignment(CellAlignment::Right),
        ]);
    }
    t.add_row(vec![
        Cell::new("run total"),
        Cell::new(""),
        Cell::new(r.succeeded).set_alignment(CellAlignment::Right),
        Cell::new(spread(&r.total_s)).set_alignment(CellAlignment::Right),
        Cell::new(format!(
            "{} ({:.1} %)",
            spread(&r.overhead_s),
            r.overhead_pct.median
        ))
        .set_alignment(CellAlignment::Right),
        Cell::new(fmt_secs(r.queued_s.median)).set_alignment(CellAlignment::Right),
        Cell::new(fmt_secs(r.backoff_s.median)).set_alignment(CellAlignment::Right),
    ]);
    t
}
