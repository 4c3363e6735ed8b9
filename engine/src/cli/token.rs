//! `beamflow token …`: named tokens with roles, and rotating the home token.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::render::table;
use super::{duration, Ctx};
use crate::api::{NewToken, Role};
use crate::util::{fmt_secs, fmt_ts};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token; it is printed once (the server keeps only a hash).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// The named tokens and their roles.
    List,
    /// Stop accepting NAME's token.
    Revoke { name: String },
    /// A new home token (written to BEAMFLOW_HOME/token by the server); the
    /// old one stays good for the grace period, while pilots and clients
    /// re-read the file.
    Rotate {
        #[arg(long, default_value = "10m", value_parser = duration)]
        grace: Duration,
    },
}

impl TokenCmd {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let c = cx.client()?;
        match self {
            TokenCmd::Add { name, role } => {
                let t = c.add_token(&NewToken { name, role }).await?;
                cx.out.show(&t, |t| t.token.clone());
                cx.out.note(format!(
                    "token `{}` ({}): shown once; give it to its holder as BEAMFLOW_TOKEN or --token",
                    t.name, t.role
                ));
            }
            TokenCmd::List => {
                let l = c.tokens().await?;
                cx.out.show(&l, |l| {
                    let mut tb = table(&["name", "role", "created"]);
                    for i in l {
                        tb.add_row(vec![
                            i.name.clone(),
                            i.role.to_string(),
                            fmt_ts(i.created_us),
                        ]);
                    }
                    tb
                });
            }
            TokenCmd::Revoke { name } => {
                let r = c.revoke_token(&name).await?;
                cx.out
                    .show(&r, |r| format!("token `{}` revoked", r.revoked));
            }
            TokenCmd::Rotate { grace } => {
                let r = c.rotate_token(grace).await?;
                cx.out.show(&r, |r| {
                    format!(
                        "the home token is new; the old one stays good for {}",
                        fmt_secs(r.grace_s)
                    )
                });
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
