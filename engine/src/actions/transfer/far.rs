//! A transfer with one end at another facility: which remote, which way,
//! and the paths at both ends checked against their allowed roots before
//! any backend ([`super::rsync`], [`super::globus`]) moves a byte.

use std::path::{Component, Path, PathBuf};

use super::check_root;
use crate::actions::Failure;
use crate::site::{Remote, TransferPolicy};

/// Which way the data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// Local sources to a remote destination.
    Push,
    /// Remote sources to a local destination.
    Pull,
}

/// A transfer with one end at a remote.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) name: String,
    pub(super) remote: Remote,
    pub(super) direction: Direction,
    /// The sources, local (push) or at the remote (pull).
    pub(super) srcs: Vec<String>,
    /// The destination, at the remote (push) or local (pull).
    pub(super) dst: String,
}

/// `NAME:/path` → (NAME, /path) when NAME looks like a remote's name; a
/// local path (absolute, relative, `~`) never does.
fn split(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    let named = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (named && !s.starts_with(['/', '.', '~'])).then_some((name, path))
}

impl Job {
    /// The remote job `srcs` → `dst` describe, `None` for a local copy.
    /// Errors name the parameter and, for an unknown remote, the ones the
    /// site declares.
    pub(super) fn plan(
        srcs: &[String],
        dst: &str,
        policy: &TransferPolicy,
    ) -> Result<Option<Job>, Failure> {
        let known = |what: &str, s: &str| -> Result<Option<String>, Failure> {
            let Some((name, _)) = split(s) else {
                return Ok(None);
            };
            if policy.remotes.contains_key(name) {
                return Ok(Some(name.to_string()));
            }
            let have: Vec<&str> = policy.remotes.keys().map(String::as_str).collect();
            Err(Failure::msg(format!(
                "params.{what}: `{s}` names remote `{name}`, which this site's [transfer.remotes] lacks ({})",
                if have.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("it has: {}", have.join(", "))
                }
            )))
        };
        let src_remotes = srcs
            .iter()
            .map(|s| known("src", s))
            .collect::<Result<Vec<_>, _>>()?;
        let dst_remote = known("dst", dst)?;
        let first = src_remotes.first().cloned().flatten();
        let (direction, name) = match (&dst_remote, src_remotes.iter().any(Option::is_some)) {
            (None, false) => return Ok(None),
            (Some(_), true) => {
                return Err(Failure::msg(
                    "params: both ends are remote; copy between two remotes through this site \
                     (one step to stage here, one to send on)",
                ))
            }
            (Some(d), false) => (Direction::Push, d.clone()),
            (None, true) => {
                if src_remotes.iter().any(|r| r != &first) {
                    return Err(Failure::msg(
                        "params.src: all sources must be at one place (this site, or one remote)",
                    ));
                }
                (Direction::Pull, first.expect("a remote source"))
            }
        };
        let path = |s: &str| split(s).map_or(s, |(_, p)| p).to_string();
        Ok(Some(Job {
            remote: policy.remotes[&name].clone(),
            name,
            direction,
            srcs: srcs.iter().map(|s| path(s)).collect(),
            dst: path(dst),
        }))
    }

    /// The destination as the step reports it: `REMOTE:/path` for a push.
    pub(super) fn shown_dst(&self) -> String {
        match self.direction {
            Direction::Push => format!("{}:{}", self.name, self.dst),
            Direction::Pull => self.dst.clone(),
        }
    }

    /// `push` or `pull`, as the step reports it.
    pub(super) fn direction_name(&self) -> &'static str {
        match self.direction {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }

    /// Checks every path at both ends before anything moves: local ones
    /// against this site's roots (sources must exist), far ones against
    /// the remote's.
    pub(super) fn check(&self, roots: &[PathBuf]) -> Result<(), Failure> {
        if self.srcs.is_empty() {
            return Err(Failure::msg("params.src: nothing to transfer"));
        }
        let far_roots: Vec<PathBuf> = self.remote.roots.iter().map(PathBuf::from).collect();
        let far = |p: &str, what: &str| self.check_far(p, &far_roots, what);
        match self.direction {
            Direction::Push => {
                for s in &self.srcs {
                    std::fs::metadata(s).map_err(|e| Failure::msg(format!("{s}: {e}")))?;
                    check_root(Path::new(s), roots, "source")?;
                }
                far(&self.dst, "destination")?;
            }
            Direction::Pull => {
                for s in &self.srcs {
                    far(s, "source")?;
                }
                check_root(Path::new(&self.dst), roots, "destination")?;
            }
        }
        Ok(())
    }

    /// A far path must be absolute, free of `..`, and under a remote root.
    fn check_far(&self, path: &str, roots: &[PathBuf], what: &str) -> Result<(), Failure> {
        let p = Path::new(path);
        let shown = format!("{}:{path}", self.name);
        if !p.is_absolute() {
            return Err(Failure::msg(format!(
                "{shown}: a remote {what} must be an absolute path"
            )));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(Failure::msg(format!(
                "{shown}: a remote {what} may not contain `..`"
            )));
        }
        if roots.is_empty() || roots.iter().any(|r| p.starts_with(r)) {
            return Ok(());
        }
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(Failure::msg(format!(
            "{shown}: {what} is outside remote `{}`'s allowed roots ({})",
            self.name,
            list.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TransferPolicy {
        let mut p = TransferPolicy::default();
        p.remotes.insert(
            "aps".into(),
            Remote {
                host: Some("dtn.example.org".into()),
                user: Some("s8id".into()),
                roots: vec!["/gdata/8idi".into()],
                ..Remote::default()
            },
        );
        p
    }

    fn error(r: Result<impl std::fmt::Debug, Failure>) -> String {
        match r {
            Err(Failure::Failed { error, .. }) => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn remote_paths_are_told_from_local_ones() {
        assert_eq!(split("aps:/gdata/x.h5"), Some(("aps", "/gdata/x.h5")));
        assert_eq!(split("/data/a:b"), None);
        assert_eq!(split("./a:b"), None);
        assert_eq!(split("~/a:b"), None);
        assert_eq!(split("plain"), None);
        let p = policy();
        assert!(Job::plan(&["/data/a".into()], "/scratch/", &p)
            .unwrap()
            .is_none());
        let push = Job::plan(&["/data/a".into()], "aps:/gdata/8idi/in/", &p)
            .unwrap()
            .unwrap();
        assert_eq!(
            (push.direction, push.dst.as_str()),
            (Direction::Push, "/gdata/8idi/in/")
        );
        let pull = Job::plan(&["aps:/gdata/8idi/r.h5".into()], "/data/", &p)
            .unwrap()
            .unwrap();
        assert_eq!(
            (pull.direction, pull.srcs[0].as_str()),
            (Direction::Pull, "/gdata/8idi/r.h5")
        );
    }

    #[test]
    fn bad_remote_transfers_say_what_is_wrong() {
        let p = policy();
        let e = error(Job::plan(&["nersc:/x".into()], "/data/", &p));
        assert!(
            e.contains("params.src: `nersc:/x` names remote `nersc`") && e.contains("it has: aps"),
            "{e}"
        );
        let e = error(Job::plan(&["aps:/x".into()], "aps:/y", &p));
        assert!(e.contains("both ends are remote"), "{e}");
        let e = error(Job::plan(
            &["aps:/x".into(), "/data/y".into()],
            "/data/",
            &p,
        ));
        assert!(e.contains("all sources must be at one place"), "{e}");
        let job = |src: &str| Job::plan(&[src.into()], "/tmp/", &p).unwrap().unwrap();
        let e = error(job("aps:/etc/passwd").check(&[]));
        assert!(
            e.contains(
                "aps:/etc/passwd: source is outside remote `aps`'s allowed roots (/gdata/8idi)"
            ),
            "{e}"
        );
        let e = error(job("aps:/gdata/8idi/../../etc/passwd").check(&[]));
        assert!(e.contains("may not contain `..`"), "{e}");
        let e = error(job("aps:gdata/x").check(&[]));
        assert!(e.contains("must be an absolute path"), "{e}");
    }
}
