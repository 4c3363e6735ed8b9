//! `beamflow admin prune`: keeping the store in bounds.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{duration, Ctx};

/// An age with its unit: a bare number would be taken as seconds, and
/// `--older-than 30` would prune nearly everything.
fn age(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>().is_ok() {
        return Err(format!(
            "`{s}` has no unit: give one, e.g. 30d or 12h (s, m, h, d)"
        ));
    }
    duration(s)
}
use crate::api::PruneRequest;
use crate::util::fmt_ts;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Delete finished runs (their attempts and events), pilots gone and
    /// log lines older than the cut-off from the store, after writing the
    /// runs to an archive file beside it (HOME/archive/*.jsonl). Catalog
    /// records and the runs' directories stay.
    Prune {
        /// Age of the newest run that goes, with its unit: 30d, 12h.
        #[arg(long, value_parser = age)]
        older_than: Duration,
        /// Delete without writing the archive.
        #[arg(long)]
        no_archive: bool,
        /// Count what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl AdminCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let AdminCmd::Prune {
            older_than,
            no_archive,
            dry_run,
        } = self;
        let req = PruneRequest {
            older_than_s: older_than.as_secs_f64(),
            archive: !no_archive,
            dry_run,
        };
        let r = cx.client()?.prune(&req).await?;
        cx.out.show(&r, |r| {
            format!(
                "cut-off: {} ({} ago)\n{} {} ({} attempts, {} events) that finished before it, in {:.1} s{}",
                fmt_ts(r.before_us),
                humantime::format_duration(older_than),
                if r.dry_run { "would prune" } else { "pruned" },
                crate::util::plural(r.runs, "run"),
                r.attempts,
                r.events,
                r.seconds,
                match &r.archive {
                    Some(p) => format!("; archived to {}", p.display()),
                    None => String::new(),
                }
            )
        });
        Ok(ExitCode::SUCCESS)
    }
}
