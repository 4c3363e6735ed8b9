//! The beamflow home (`~/.beamflow`, or `BEAMFLOW_HOME`): where a server
//! keeps its store, tokens and certificate, and where clients and pilots on
//! the same machine find it through `server.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The home token: opens everything (mode 0600).
pub const TOKEN_FILE: &str = "token";
/// The pilots' token: opens the pilot endpoint only (mode 0600).
pub const PILOT_TOKEN_FILE: &str = "pilot-token";
/// How clients find the running server ([`Access`]).
pub const ACCESS_FILE: &str = "server.json";
/// Held locked by the one server of a home ([`HomeLock`]).
pub const LOCK_FILE: &str = "server.lock";

/// `~/.beamflow`, or `$BEAMFLOW_HOME` when set.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("BEAMFLOW_HOME") {
        return PathBuf::from(h);
    }
    expand_home("~/.beamflow")
}

/// `~/x` as `$HOME/x`; other paths as they are.
pub fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest.trim_start_matches('/'));
        }
    }
    PathBuf::from(p)
}

/// How clients find a running server: written to `HOME/server.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Access {
    pub url: String,
    pub pid: u32,
    pub store: String,
    /// The certificate the server presents (PEM), which clients pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Its SHA-256, to compare with what a copy of the file holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Access {
    pub fn path(home: &Path) -> PathBuf {
        home.join(ACCESS_FILE)
    }

    /// The running server's `server.json`, or why there is none.
    pub fn read(home: &Path) -> anyhow::Result<Access> {
        let p = Access::path(home);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "no server found: {} is missing (start `beamflow server`, or pass --url / BEAMFLOW_URL)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: not valid", p.display()))
    }

    /// `server.json` if it is there and readable.
    pub fn saved(home: &Path) -> Option<Access> {
        Access::read(home).ok()
    }

    pub fn write(&self, home: &Path) -> anyhow::Result<()> {
        let p = Access::path(home);
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&p, text).with_context(|| format!("{}: cannot write", p.display()))
    }

    /// Removes `server.json` if it still describes this server (same pid
    /// and URL): a file another server wrote since stays.
    pub fn remove_if_own(&self, home: &Path) {
        if Access::saved(home).is_some_and(|a| a.pid == self.pid && a.url == self.url) {
            let _ = std::fs::remove_file(Access::path(home));
        }
    }
}

/// The lock a server holds on its home while it runs: a second server on
/// the same home would share its store, tokens and `server.json`. The
/// kernel releases it when the process ends, however it ends.
pub struct HomeLock(#[allow(dead_code)] std::fs::File);

impl HomeLock {
    /// Takes the home's lock, or says which server holds it.
    pub fn take(home: &Path) -> anyhow::Result<HomeLock> {
        use std::os::fd::AsRawFd;
        let path = home.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(HomeLock(file));
        }
        let other = match Access::saved(home) {
            Some(a) => format!("pid {}, {}", a.pid, a.url),
            None => "starting up".into(),
        };
        anyhow::bail!(
            "another beamflow server ({other}) uses this home, {}; stop it first, or give this one another --home",
            home.display()
        )
    }
}

/// The token file a pilot on this home reads: the pilots' own token where
/// the server has made one, else the home token.
pub fn pilot_token_file(home: &Path) -> PathBuf {
    Some(home.join(PILOT_TOKEN_FILE))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| home.join(TOKEN_FILE))
}

/// A token file's token, without its line break.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read token", path.display()))?
        .trim()
        .to_string())
}

/// Writes `text` to `path` with mode 0600, atomically: tokens and keys are
/// never readable by others, not even for a moment.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
