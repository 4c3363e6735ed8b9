//! `beamflow ui`: a link that signs a browser in to the web page once.

use std::process::ExitCode;

use serde_json::json;

use super::Ctx;

pub async fn link(cx: &Ctx) -> anyhow::Result<ExitCode> {
    let c = cx.client()?;
    // A wrong token or a stopped server is said here, not in the browser.
    let login = c.ui_login_url().await?;
    let v = json!({ "url": format!("{}/ui/", c.url), "login": login });
    cx.out.show(&v, |_| {
        let mut text = format!(
            "Open this link in a browser on a machine that can reach {}:\n{login}\n\
             (it signs one browser in, once, within two minutes)",
            c.url
        );
        if let Some(t) = &c.trust {
            text += &format!(
                "\nThe browser will not know the server's own certificate ({}): accept it \
                 if its SHA-256 fingerprint is {}",
                t.path.display(),
                t.fingerprint()
            );
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}
