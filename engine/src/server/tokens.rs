//! Who may do what. The home token (`BEAMFLOW_HOME/token`, mode 0600) is
//! the admin's: everything, pilots and allocation queues included. People
//! and services get their own tokens with a role (`beamflow token add`):
//! a *viewer* reads (runs, flows, pilots, catalog, events), a *submitter*
//! also registers flows and starts, cancels and retries runs. Only a
//! keyed hash of each such token is kept (`BEAMFLOW_HOME/tokens.json`).
//!
//! Pilots connect with a *pilot* token, which opens the pilot endpoint and
//! nothing else: the server writes one to `BEAMFLOW_HOME/pilot-token`
//! (0600) and pilots read it, so a pilot's home — on a compute node, where
//! users' steps run — need not hold the admin token.
//!
//! `beamflow token rotate` replaces the home token without a restart: the
//! server writes the new one to the file and accepts the old one for a
//! grace period, in which pilots — which re-read their token file before
//! each reconnect, and keep the connection they have — and clients move
//! over. Triggers inside the server submit to its core directly and hold
//! no token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use crate::api::{Role, TokenInfo};

/// The role a request needs: reading is for viewers; registering flows
/// and starting, cancelling and retrying runs for submitters; pilots,
/// allocation queues, sign-in codes and tokens for the admin.
pub fn needed(method: &axum::http::Method, path: &str) -> Role {
    use axum::http::Method;
    if path == "/api/pilot" {
        return Role::Pilot;
    }
    if path == "/api/agent" {
        return Role::Agent;
    }
    let admin_only = path.starts_with("/api/alloc")
        || path.starts_with("/api/tokens")
        || path.starts_with("/api/admin");
    // Anyone who may watch may ask for a sign-in code; the page then
    // opens what their token opens.
    if admin_only {
        Role::Admin
    } else if method == Method::GET || method == Method::HEAD || path == "/api/ui/code" {
        Role::Viewer
    } else {
        Role::Submitter
    }
}

/// The name `tokens.json` keeps the pilots' token under.
pub const PILOTS: &str = "pilots";

pub struct Tokens {
    home: PathBuf,
    admin: String,
    /// The admin token before the last rotation, good until then.
    previous: Option<(String, Instant)>,
    named: Vec<TokenInfo>,
}

/// Compares in time independent of where the strings differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash(token: &str) -> String {
    blake3::keyed_hash(blake3::hash(b"beamflow token").as_bytes(), token.as_bytes())
        .to_hex()
        .to_string()
}

/// 32 random bytes as hex.
pub fn fresh() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("/dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Tokens {
    pub fn load(home: &Path, admin: String) -> anyhow::Result<Tokens> {
        let path = home.join("tokens.json");
        let named = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}: not a token list", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        Ok(Tokens {
            home: home.to_path_buf(),
            admin,
            previous: None,
            named,
        })
    }

    /// The role of a presented token, if it is one.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let p = presented.as_bytes();
        if same(p, self.admin.as_bytes()) {
            return Some(Role::Admin);
        }
        if let Some((old, until)) = &self.previous {
            if Instant::now() < *until && same(p, old.as_bytes()) {
                return Some(Role::Admin);
            }
        }
        let h = hash(presented);
        self.named
            .iter()
            .find(|t| same(t.hash.as_bytes(), h.as_bytes()))
            .map(|t| t.role)
    }

    /// The home token now (the web page's session key derives from it).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.named
            .iter()
            .map(|t| TokenInfo {
                hash: String::new(),
                ..t.clone()
            })
            .collect()
    }

    /// A new token for `name`; it is shown once, only its hash is kept.
    pub fn add(&mut self, name: &str, role: Role) -> anyhow::Result<String> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !ok {
            anyhow::bail!("token name `{name}`: use letters, digits and - _ . @");
        }
        if self.named.iter().any(|t| t.name == name) {
            anyhow::bail!("a token named `{name}` exists: revoke it first");
        }
        let token = fresh()?;
        self.named.push(TokenInfo {
            name: name.to_string(),
            role,
            hash: hash(&token),
            created_us: crate::util::now_us(),
        });
        self.save()?;
        Ok(token)
    }

    /// Forgets `name`'s token; false when there is none.
    pub fn revoke(&mut self, name: &str) -> anyhow::Result<bool> {
        let before = self.named.len();
        self.named.retain(|t| t.name != name);
        if self.named.len() == before {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// The pilots' token in `BEAMFLOW_HOME/pilot-token`, kept as the named
    /// token `pilots`: made (or made again, when the file is missing or
    /// no longer accepted, e.g. after `beamflow token revoke pilots`) at
    /// the server's start.
    pub fn ensure_pilot_token(&mut self) -> anyhow::Result<()> {
        let path = self.home.join("pilot-token");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if self.role_of(current.trim()) == Some(Role::Pilot) {
            return Ok(());
        }
        self.named.retain(|t| t.name != PILOTS);
        let token = self.add(PILOTS, Role::Pilot)?;
        crate::home::write_private(&path, &token)
    }

    /// A new home token, written to `BEAMFLOW_HOME/token`; the old one
    /// stays good for `grace`.
    pub fn rotate(&mut self, grace: Duration) -> anyhow::Result<()> {
        let new = fresh()?;
        crate::home::write_private(&self.home.join("token"), &new)?;
        let old = std::mem::replace(&mut self.admin, new);
        self.previous = Some((old, Instant::now() + grace));
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        crate::home::write_private(
            &self.home.join("tokens.json"),
            &serde_json::to_string_pretty(&self.named)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn roles_open_what_they_should_and_rotation_keeps_the_old_token_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tokens::load(dir.path(), "a".repeat(64)).unwrap();
        let viewer = t.add("wall-display", Role::Viewer).unwrap();
        let submitter = t.add("beamline-8id", Role::Submitter).unwrap();
        assert!(t.add("wall-display", Role::Admin).is_err());
        assert!(t.add("bad name", Role::Viewer).is_err());
        assert_eq!(t.role_of(&viewer), Some(Role::Viewer));
        assert_eq!(t.role_of(&submitter), Some(Role::Submitter));
        assert_eq!(t.role_of(&"a".repeat(64)), Some(Role::Admin));
        assert_eq!(t.role_of("nope"), None);
        // The file keeps hashes, never the tokens; a reload knows them.
        let text = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!text.contains(&viewer) && !text.contains(&submitter));
        let t2 = Tokens::load(dir.path(), "a".repeat(64)).unwrap();
        assert_eq!(t2.role_of(&submitter), Some(Role::Submitter));
        assert!(t.list().iter().all(|i| i.hash.is_empty()));
        assert!(t.revoke("wall-display").unwrap());
        assert_eq!(t.role_of(&viewer), None);
        assert!(!t.revoke("wall-display").unwrap());

        t.rotate(Duration::from_secs(60)).unwrap();
        let new = std::fs::read_to_string(dir.path().join("token")).unwrap();
        assert_eq!(t.role_of(&new), Some(Role::Admin));
        assert_eq!(
            t.role_of(&"a".repeat(64)),
            Some(Role::Admin),
            "in its grace"
        );
        t.rotate(Duration::ZERO).unwrap();
        assert_eq!(t.role_of(&new), None, "grace over");

        assert_eq!(needed(&Method::GET, "/api/runs"), Role::Viewer);
        assert_eq!(needed(&Method::POST, "/api/runs"), Role::Submitter);
        assert_eq!(needed(&Method::POST, "/api/runs/3/cancel"), Role::Submitter);
        assert_eq!(needed(&Method::GET, "/api/pilot"), Role::Pilot);
        assert!(Role::Pilot.opens(Role::Pilot) && Role::Admin.opens(Role::Pilot));
        for r in [Role::Viewer, Role::Submitter] {
            assert!(!r.opens(Role::Pilot) && !Role::Pilot.opens(r), "{r}");
        }
        assert!(!Role::Pilot.opens(Role::Admin));
        assert_eq!(needed(&Method::GET, "/api/agent"), Role::Agent);
        assert!(Role::Agent.opens(Role::Agent) && Role::Admin.opens(Role::Agent));
        for r in [Role::Viewer, Role::Submitter, Role::Pilot] {
            assert!(!r.opens(Role::Agent) && !Role::Agent.opens(r), "{r}");
        }
        assert!(!Role::Agent.opens(Role::Admin));
        assert!(Role::Submitter.opens(Role::Viewer) && !Role::Viewer.opens(Role::Submitter));
        t.ensure_pilot_token().unwrap();
        let pilot = std::fs::read_to_string(dir.path().join("pilot-token")).unwrap();
        assert_eq!(t.role_of(&pilot), Some(Role::Pilot));
        t.ensure_pilot_token().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pilot-token")).unwrap(),
            pilot,
            "kept while it is accepted"
        );
        t.revoke(PILOTS).unwrap();
        t.ensure_pilot_token().unwrap();
        let again = std::fs::read_to_string(dir.path().join("pilot-token")).unwrap();
        assert_ne!(again, pilot);
        assert_eq!(t.role_of(&again), Some(Role::Pilot));
        assert_eq!(needed(&Method::GET, "/api/alloc"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/api/tokens"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/api/admin/prune"), Role::Admin);
    }
}
