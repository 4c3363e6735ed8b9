//! `beamflow catalog search`: the records publish steps wrote.

use std::process::ExitCode;

use clap::Subcommand;

use super::render::{dash, table};
use super::Ctx;
use crate::util::fmt_ts;

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Records matching every word of TEXT and every --field KEY=VALUE.
    Search {
        text: Option<String>,
        /// Dotted path into the record, e.g. fields.sample=silica or input.src=/data/x.
        #[arg(long = "field")]
        fields: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

impl CatalogCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let CatalogCmd::Search {
            text,
            fields,
            limit,
        } = self;
        let rows = cx
            .client()?
            .catalog(text.as_deref(), &fields, limit)
            .await?;
        cx.out.show(&rows, |rows| {
            let mut t = table(&["record", "run", "flow", "created", "title", "outputs"]);
            for r in rows {
                t.add_row(vec![
                    r.id.to_string(),
                    r.run_id.to_string(),
                    r.flow.clone(),
                    fmt_ts(r.created_us),
                    dash(r.record.get("title").and_then(|t| t.as_str())),
                    dash(r.record.get("outputs").map(|o| o.to_string()).as_deref()),
                ]);
            }
            t
        });
        Ok(ExitCode::SUCCESS)
    }
}
