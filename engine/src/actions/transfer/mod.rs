//! `transfer`: copy files or trees, verified by BLAKE3, confined to the site's
//! allowed roots, and resumable: a destination file that already has the
//! source's content is left alone, and partial copies never appear under the
//! final name (they are written to `NAME.part` and renamed).
//!
//! A `src` or `dst` written `NAME:/path` lives at remote NAME of the site's
//! `[transfer.remotes]` ([`far`]), and is moved by that remote's backend
//! instead: [`rsync`] over SSH or [`globus`] through Globus Transfer.

mod far;
mod globus;
pub mod loopback;
mod rsync;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Cancel, Failure};
use crate::protocol::TaskSpec;
use crate::site::{RemoteBackend, TransferPolicy};

pub async fn run(
    spec: &TaskSpec,
    policy: &TransferPolicy,
    cancel: &Cancel,
) -> Result<Value, Failure> {
    let srcs: Vec<String> = match spec.params.get("src") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| Failure::msg(format!("params.src: expected paths, got {x}")))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(Failure::msg(format!(
                "params.src: expected a path or a list of paths, got {other}"
            )))
        }
        None => return Err(Failure::msg("params.src is required")),
    };
    let dst = super::str_param(spec, "dst")?.to_string();
    let verify = spec
        .params
        .get("verify")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    copy(srcs, dst, verify, policy, cancel).await
}

/// Moves `srcs` to `dst` by the backend their places call for (local,
/// rsync or Globus), every path checked against the roots of its end.
pub(crate) async fn copy(
    srcs: Vec<String>,
    dst: String,
    verify: bool,
    policy: &TransferPolicy,
    cancel: &Cancel,
) -> Result<Value, Failure> {
    let roots = policy.roots();
    let cancel = cancel.clone();
    let job = far::Job::plan(&srcs, &dst, policy)?;
    if let Some(job) = &job {
        if job.remote.backend == RemoteBackend::Globus {
            return job.globus(verify, &roots, &cancel).await;
        }
    }
    tokio::task::spawn_blocking(move || match job {
        Some(job) => job.rsync(verify, &roots, &cancel),
        None => {
            let srcs: Vec<PathBuf> = srcs.iter().map(PathBuf::from).collect();
            copy_all(&srcs, Path::new(&dst), verify, &roots, &cancel)
        }
    })
    .await
    .map_err(|e| Failure::msg(format!("transfer panicked: {e}")))?
}

#[derive(Default)]
struct Tally {
    files: Vec<String>,
    bytes: u64,
    copied: u64,
    skipped: u64,
}

fn copy_all(
    srcs: &[PathBuf],
    dst: &Path,
    verify: bool,
    roots: &[PathBuf],
    cancel: &Cancel,
) -> Result<Value, Failure> {
    if srcs.is_empty() {
        return Err(Failure::msg("params.src: nothing to transfer"));
    }
    let into_dir = srcs.len() > 1 || dst.is_dir() || dst.to_string_lossy().ends_with('/');
    let mut plan: Vec<(PathBuf, PathBuf)> = Vec::new();
    for src in srcs {
        let meta =
            std::fs::metadata(src).map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?;
        check_root(src, roots, "source")?;
        let name = src.file_name().map(PathBuf::from).unwrap_or_default();
        let target = if into_dir {
            dst.join(&name)
        } else {
            dst.to_path_buf()
        };
        if meta.is_dir() {
            walk(src, &target, &mut plan)?;
        } else {
            plan.push((src.clone(), target));
        }
    }
    // Every path is checked before anything is written: a refused transfer
    // leaves no trace outside the roots.
    for (s, d) in &plan {
        check_root(s, roots, "source")?;
        check_root(d, roots, "destination")?;
    }
    let mut t = Tally::default();
    for (s, d) in &plan {
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::msg(format!("{}: {e}", parent.display())))?;
        }
        let n = copy_one(s, d, verify, cancel, &mut t)?;
        t.bytes += n;
        t.files.push(d.display().to_string());
    }
    let final_dst = if into_dir || srcs.len() > 1 {
        dst.to_path_buf()
    } else {
        plan.first()
            .map(|p| p.1.clone())
            .unwrap_or(dst.to_path_buf())
    };
    Ok(json!({
        "dst": final_dst.display().to_string(),
        "files": t.files,
        "bytes": t.bytes,
        "copied": t.copied,
        "skipped": t.skipped,
    }))
}

fn walk(src: &Path, dst: &Path, plan: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), Failure> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let ft = e
            .file_type()
            .map_err(|e| Failure::msg(format!("{}: {e}", p.display())))?;
        if ft.is_dir() {
            walk(&p, &dst.join(e.file_name()), plan)?;
        } else if ft.is_file() {
            plan.push((p, dst.join(e.file_name())));
        }
        // Symlinks and special files are not followed: they could lead outside
        // the allowed roots.
    }
    Ok(())
}

/// Refuses paths that resolve outside every allowed root (symlinks included).
pub(super) fn check_root(path: &Path, roots: &[PathBuf], what: &str) -> Result<(), Failure> {
    if roots.is_empty() {
        return Ok(());
    }
    // The destination may not exist yet: resolve its nearest existing ancestor.
    let mut probe = path.to_path_buf();
    let mut rest = PathBuf::new();
    let resolved = loop {
        match probe.canonicalize() {
            Ok(c) => break c.join(&rest),
            Err(_) => {
                let Some(name) = probe.file_name().map(PathBuf::from) else {
                    return Err(Failure::msg(format!(
                        "{}: cannot resolve {what} path",
                        path.display()
                    )));
                };
                rest = name.join(&rest);
                if !probe.pop() {
                    return Err(Failure::msg(format!(
                        "{}: cannot resolve {what} path",
                        path.display()
                    )));
                }
            }
        }
    };
    let ok = roots.iter().any(|r| {
        let r = r.canonicalize().unwrap_or_else(|_| r.clone());
        resolved.starts_with(&r)
    });
    if ok {
        Ok(())
    } else {
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(Failure::msg(format!(
            "{}: {what} is outside the site's allowed transfer roots ({})",
            path.display(),
            list.join(", ")
        )))
    }
}

fn hash_file(path: &Path, cancel: &Cancel) -> Result<(blake3::Hash, u64), Failure> {
    let mut f = File::open(path).map_err(|e| Failure::msg(format!("{}: {e}", path.display())))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        let k = f
            .read(&mut buf)
            .map_err(|e| Failure::msg(format!("{}: {e}", path.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize(), n))
}

fn copy_one(
    src: &Path,
    dst: &Path,
    verify: bool,
    cancel: &Cancel,
    t: &mut Tally,
) -> Result<u64, Failure> {
    let src_len = std::fs::metadata(src)
        .map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?
        .len();
    if let Ok(m) = std::fs::metadata(dst) {
        if m.is_file() && m.len() == src_len {
            let (a, _) = hash_file(src, cancel)?;
            let (b, _) = hash_file(dst, cancel)?;
            if a == b {
                t.skipped += 1;
                return Ok(src_len);
            }
        }
    }
    let part = {
        let mut s = dst.as_os_str().to_owned();
        s.push(".part");
        PathBuf::from(s)
    };
    let mut input = File::open(src).map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?;
    let mut out =
        File::create(&part).map_err(|e| Failure::msg(format!("{}: {e}", part.display())))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        if cancel.is_cancelled() {
            let _ = std::fs::remove_file(&part);
            return Err(Failure::Cancelled);
        }
        let k = input
            .read(&mut buf)
            .map_err(|e| Failure::msg(format!("{}: {e}", src.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| Failure::msg(format!("{}: {e}", part.display())))?;
        n += k as u64;
    }
    out.sync_all()
        .map_err(|e| Failure::msg(format!("{}: {e}", part.display())))?;
    drop(out);
    if verify {
        let (written, _) = hash_file(&part, cancel)?;
        if written != h.finalize() {
            let _ = std::fs::remove_file(&part);
            return Err(Failure::msg(format!(
                "{}: checksum mismatch after copy from {}",
                dst.display(),
                src.display()
            )));
        }
    }
    std::fs::rename(&part, dst).map_err(|e| Failure::msg(format!("{}: {e}", dst.display())))?;
    t.copied += 1;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, content: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn counts(v: &Value) -> (u64, u64, u64) {
        (
            v["copied"].as_u64().unwrap(),
            v["skipped"].as_u64().unwrap(),
            v["bytes"].as_u64().unwrap(),
        )
    }

    #[test]
    fn copies_a_tree_then_skips_identical_files_and_recopies_changed_ones() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("a.bin"), &[1u8; 1000]);
        write(&src.join("sub/b.bin"), b"hello");
        let dst = t.path().join("dst/");
        let cancel = Cancel::default();
        let out = copy_all(std::slice::from_ref(&src), &dst, true, &[], &cancel)
            .ok()
            .unwrap();
        assert_eq!(counts(&out), (2, 0, 1005));
        assert_eq!(std::fs::read(dst.join("src/sub/b.bin")).unwrap(), b"hello");
        // Resumed: identical files are left alone.
        let out = copy_all(std::slice::from_ref(&src), &dst, true, &[], &cancel)
            .ok()
            .unwrap();
        assert_eq!(counts(&out), (0, 2, 1005));
        // Same size, other content: copied again, and no .part file remains.
        write(&src.join("sub/b.bin"), b"world");
        let out = copy_all(std::slice::from_ref(&src), &dst, true, &[], &cancel)
            .ok()
            .unwrap();
        assert_eq!(counts(&out), (1, 1, 1005));
        assert_eq!(std::fs::read(dst.join("src/sub/b.bin")).unwrap(), b"world");
        assert!(!dst.join("src/sub/b.bin.part").exists());
    }

    #[test]
    fn a_single_file_may_be_renamed() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("frame.h5");
        write(&src, b"data");
        let dst = t.path().join("out/renamed.h5");
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let out = copy_all(&[src], &dst, true, &[], &Cancel::default())
            .ok()
            .unwrap();
        assert_eq!(out["dst"], json!(dst.display().to_string()));
        assert_eq!(std::fs::read(&dst).unwrap(), b"data");
    }

    #[test]
    fn paths_outside_the_allowed_roots_are_refused_with_their_name() {
        let t = tempfile::tempdir().unwrap();
        let inside = t.path().join("allowed");
        let outside = t.path().join("elsewhere");
        write(&inside.join("x"), b"1");
        write(&outside.join("y"), b"2");
        let roots = vec![inside.clone()];
        let cancel = Cancel::default();
        // The error of copying `src` to `dst`, which must fail.
        let refused =
            |src: PathBuf, dst: PathBuf| match copy_all(&[src], &dst, true, &roots, &cancel) {
                Err(Failure::Failed { error, .. }) => error,
                _ => panic!("expected a failure"),
            };
        let e = refused(outside.join("y"), inside.join("z"));
        assert!(
            e.contains("elsewhere/y: source is outside the site's allowed transfer roots"),
            "{e}"
        );
        let e = refused(inside.join("x"), outside.join("new/dir/x"));
        assert!(
            e.contains("elsewhere/new/dir/x: destination is outside"),
            "{e}"
        );
        assert!(
            !outside.join("new").exists(),
            "nothing may be created outside the roots"
        );
        // A symlink inside the root that points outside is refused too.
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        let e = refused(inside.join("link/y"), inside.join("copy"));
        assert!(e.contains("source is outside"), "{e}");
        // `..` climbs out of a root: refused, both ways.
        let e = refused(inside.join("../elsewhere/y"), inside.join("copy"));
        assert!(e.contains("source is outside"), "{e}");
        let e = refused(inside.join("x"), inside.join("../elsewhere/dotdot"));
        assert!(e.contains("destination is outside"), "{e}");
        // So does writing through the symlink.
        let e = refused(inside.join("x"), inside.join("link/through"));
        assert!(e.contains("destination is outside"), "{e}");
        assert!(!outside.join("dotdot").exists() && !outside.join("through").exists());
        // Within the roots all is well.
        assert!(copy_all(
            &[inside.join("x")],
            &inside.join("x2"),
            true,
            &roots,
            &cancel
        )
        .is_ok());
    }

    #[test]
    fn a_missing_source_names_the_file() {
        let t = tempfile::tempdir().unwrap();
        let e = match copy_all(
            &[t.path().join("nope.h5")],
            t.path(),
            true,
            &[],
            &Cancel::default(),
        ) {
            Err(Failure::Failed { error, .. }) => error,
            _ => panic!(),
        };
        assert!(e.contains("nope.h5: No such file"), "{e}");
    }
}
