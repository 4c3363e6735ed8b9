//! `beamflow pilots`: the pilots the server knows and what they offer.

use std::process::ExitCode;

use super::render::{dash, table};
use super::Ctx;
use crate::util::fmt_ts;

pub async fn list(cx: &Ctx) -> anyhow::Result<ExitCode> {
    let rows = cx.client()?.pilots().await?;
    cx.out.show(&rows, |rows| {
        let mut t = table(&[
            "id",
            "name",
            "host",
            "state",
            "resources",
            "targets",
            "batch job",
            "since",
        ]);
        for p in rows {
            t.add_row(vec![
                p.id.to_string(),
                p.name.clone(),
                p.host.clone(),
                p.state.to_string(),
                p.info.resources.to_string(),
                p.info.targets.join(","),
                dash(p.info.batch_job.as_deref()),
                fmt_ts(p.connected_us),
            ]);
        }
        t
    });
    Ok(ExitCode::SUCCESS)
}
