//! Where `transfer` steps may read and write, and the far ends (other
//! facilities' data-transfer nodes and Globus collections) they may reach,
//! with each backend's keys checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::home::expand_home;

/// Which paths `transfer` steps may read and write, and the far ends
/// (other facilities' data-transfer nodes) they may reach.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferPolicy {
    /// Absolute roots (`~` expands to the home directory). Empty: no restriction.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
    /// Far ends by name: a transfer's `src` or `dst` written `NAME:/path`
    /// is moved to or from remote NAME.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remotes: BTreeMap<String, Remote>,
}

/// A far end: another facility's data-transfer node reached over SSH with
/// rsync, or its Globus collection. Credentials live here, in the
/// facility's site config (a key or token *file*), or in the user's SSH
/// agent — never in a flow, the store or a log.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The backend: `rsync` (over SSH, the default: the facility-standard
    /// fallback) or `globus` (Globus Transfer through its REST API).
    #[serde(default)]
    pub backend: RemoteBackend,
    /// rsync: the far end's data-transfer host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// A private key file for this site's transfer account (default: the
    /// SSH agent and ~/.ssh, as `ssh` finds them).
    #[serde(default)]
    pub identity: Option<String>,
    /// The far end's host keys (default: ~/.ssh/known_hosts). Host keys are
    /// always checked: an unknown host is refused, never added.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Absolute roots at the far end that transfers may read and write;
    /// empty: no restriction. Checked on the path as written (no `..`).
    #[serde(default)]
    pub roots: Vec<String>,
    /// Bandwidth cap, KiB/s (rsync's --bwlimit), to share a link.
    #[serde(default)]
    pub bwlimit_kib: Option<u64>,
    /// globus: the far end's collection (endpoint) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// globus: this site's own collection id, the near end of each task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<String>,
    /// globus: the local directory this site's collection is rooted at
    /// (default `/`): with `/eagle`, the local path `/eagle/x` is `/x` to
    /// Globus. Collections rarely expose the whole filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_collection_root: Option<String>,
    /// globus: a file (mode 0600) holding a Transfer API access token. It
    /// is read when a transfer starts, so a renewed token needs no restart,
    /// and its content is never stored, sent to pilots or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// globus: the Transfer API's base URL (default
    /// `https://transfer.api.globus.org/v0.10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RemoteBackend {
    #[default]
    Rsync,
    Globus,
}

impl Remote {
    /// What is wrong with this remote's keys for its backend, as
    /// (key, problem) pairs: each backend's required keys present, the
    /// other backend's absent (a `host` on a Globus remote is a mistake
    /// worth naming, not something to ignore).
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let rsync_keys = [
            ("host", self.host.is_some()),
            ("user", self.user.is_some()),
            ("port", self.port.is_some()),
            ("identity", self.identity.is_some()),
            ("known_hosts", self.known_hosts.is_some()),
            ("bwlimit_kib", self.bwlimit_kib.is_some()),
        ];
        let globus_keys = [
            ("endpoint", self.endpoint.is_some()),
            ("local_endpoint", self.local_endpoint.is_some()),
            (
                "local_collection_root",
                self.local_collection_root.is_some(),
            ),
            ("token_file", self.token_file.is_some()),
            ("api_url", self.api_url.is_some()),
        ];
        let (name, required, foreign): (&str, &[&'static str], &[(&'static str, bool)]) =
            match self.backend {
                RemoteBackend::Rsync => ("rsync", &["host"], &globus_keys),
                RemoteBackend::Globus => (
                    "globus",
                    &["endpoint", "local_endpoint", "token_file"],
                    &rsync_keys,
                ),
            };
        let given = |k: &str| {
            rsync_keys
                .iter()
                .chain(globus_keys.iter())
                .any(|(key, set)| *key == k && *set)
        };
        for k in required {
            if !given(k) {
                out.push((*k, format!("required for backend = \"{name}\"")));
            }
        }
        for (k, set) in foreign.iter() {
            if *set {
                out.push((*k, format!("not a key of backend = \"{name}\"")));
            }
        }
        for (k, v) in [
            ("endpoint", &self.endpoint),
            ("local_endpoint", &self.local_endpoint),
        ] {
            if let Some(id) = v {
                if !is_uuid(id) {
                    out.push((
                        k,
                        format!("`{id}` is not a Globus collection id (a UUID, as the Globus web app shows it)"),
                    ));
                }
            }
        }
        if let Some(r) = &self.local_collection_root {
            if !r.starts_with('/') {
                out.push((
                    "local_collection_root",
                    format!("`{r}` must be an absolute path"),
                ));
            }
        }
        out
    }
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

impl TransferPolicy {
    /// Roots with `~` expanded.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.allowed_roots.iter().map(|r| expand_home(r)).collect()
    }
}
