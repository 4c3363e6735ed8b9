//! `beamflow site …`: check and show site configs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::Ctx;
use crate::site::SiteConfig;

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Check site config files; errors name file, line and key.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The effective configuration of a site (a name or a file), with
    /// site-wide defaults applied to each target.
    Show {
        site: String,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

impl SiteCmd {
    /// No server involved.
    pub fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            SiteCmd::Validate { files } => {
                let mut bad = 0;
                for f in &files {
                    match SiteConfig::load(f) {
                        Ok(s) => cx.out.line(format!(
                            "{}: ok ({}, {} target{})",
                            f.display(),
                            s.scheduler.name(),
                            s.targets.len(),
                            if s.targets.len() == 1 { "" } else { "s" }
                        )),
                        Err(e) => {
                            eprintln!("{e:#}");
                            bad += 1;
                        }
                    }
                }
                if bad > 0 {
                    anyhow::bail!("{bad} of {} site configs are invalid", files.len());
                }
                Ok(ExitCode::SUCCESS)
            }
            SiteCmd::Show { site, target } => {
                let path = crate::site::find(&site)?;
                let s = SiteConfig::load(&path)?;
                let names: Vec<String> = match target {
                    Some(t) => vec![t],
                    None => s.targets.keys().cloned().collect(),
                };
                let mut targets = serde_json::Map::new();
                for n in &names {
                    targets.insert(n.clone(), serde_json::to_value(s.effective(n)?)?);
                }
                let out = json!({
                    "file": path.display().to_string(),
                    "name": s.name,
                    "scheduler": s.scheduler,
                    "description": s.description,
                    "transfer": s.transfer,
                    "vars": s.vars,
                    "targets": targets,
                });
                let text = toml::to_string_pretty(&without_nulls(out.clone()))?;
                cx.out.show(&out, |_| {
                    format!(
                        "# effective configuration of {}\n{}",
                        path.display(),
                        text.trim_end()
                    )
                });
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// TOML has no null: unset options are left out.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k, without_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        x => x,
    }
}
