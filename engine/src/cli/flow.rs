//! `beamflow flow …`: register, list, show and validate flow files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::render::table;
use super::Ctx;
use crate::site::SiteConfig;
use crate::util::fmt_ts;

#[derive(Subcommand)]
pub enum FlowCmd {
    /// Validate and store flow files (a changed flow needs a new version).
    Register { files: Vec<PathBuf> },
    /// Registered flows.
    List,
    /// One flow's definition.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Check flow files without a server.
    Validate {
        files: Vec<PathBuf>,
        /// Also check targets, limits and site.* variables against a site.
        #[arg(long)]
        site: Option<PathBuf>,
    },
}

impl FlowCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            FlowCmd::Validate { files, site } => {
                let site = site.as_deref().map(SiteConfig::load).transpose()?;
                let mut bad = false;
                for path in &files {
                    let src = std::fs::read_to_string(path)
                        .with_context(|| format!("{}: cannot read", path.display()))?;
                    match crate::flow::parse(&src, &path.display().to_string(), site.as_ref()) {
                        Ok(spec) => cx.out.line(format!(
                            "{}: ok (flow {} v{}, {})",
                            path.display(),
                            spec.name,
                            spec.version,
                            crate::util::plural(spec.steps.len() as u64, "step")
                        )),
                        Err(e) => {
                            eprintln!("{e}");
                            bad = true;
                        }
                    }
                }
                // An invalid file is an error, as for `site validate`
                // and `register` (see cli::main's rule).
                Ok(if bad {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                })
            }
            FlowCmd::Register { files } => {
                let c = cx.client()?;
                let mut all = Vec::new();
                for path in &files {
                    let r = c.register(path).await?;
                    cx.out.line(format!(
                        "{}: flow {} v{} {}",
                        path.display(),
                        r.name,
                        r.version,
                        if r.changed { "registered" } else { "unchanged" }
                    ));
                    all.push(r);
                }
                cx.out.json(&all);
                Ok(ExitCode::SUCCESS)
            }
            FlowCmd::List => {
                let rows = cx.client()?.flows().await?;
                cx.out.show(&rows, |rows| {
                    let mut t = table(&["flow", "version", "steps", "registered", "description"]);
                    for r in rows {
                        let steps: Vec<&str> =
                            r.spec.steps.iter().map(|s| s.name.as_str()).collect();
                        t.add_row(vec![
                            r.name.clone(),
                            r.version.to_string(),
                            steps.join(" → "),
                            fmt_ts(r.registered_us),
                            r.spec.description.clone(),
                        ]);
                    }
                    t
                });
                Ok(ExitCode::SUCCESS)
            }
            FlowCmd::Show { name, version } => {
                let row = cx.client()?.flow(&name, version).await?;
                cx.out.show(&row, |row| {
                    format!(
                        "# {} v{} ({})\n{}",
                        row.name,
                        row.version,
                        row.path,
                        row.source.as_deref().unwrap_or("")
                    )
                });
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
