//! `transfer` to or from another facility over SSH with rsync, the
//! facility-standard fallback where no Globus endpoint serves: resumable
//! (`--partial-dir`: an interrupted file is kept aside and its bytes reused
//! by the next try, never left under its final name), checked (`--checksum`
//! decides what is already there by content, as the local backend does; rsync
//! verifies every file it moves by a whole-file checksum), host keys always
//! checked, keys from the site config or the user's SSH agent — never from a
//! flow. Allowed roots hold at both ends: this site's as for local copies,
//! the remote's on the path as written (absolute, no `..`, and symlinks
//! leading out of the tree are not followed: `--safe-links`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::far::{Direction, Job};
use crate::actions::{Cancel, Failure};
use crate::home::expand_home;

impl Job {
    /// Checks every path at both ends, then runs rsync to completion or
    /// until `cancel`.
    pub(super) fn rsync(
        &self,
        verify: bool,
        roots: &[PathBuf],
        cancel: &Cancel,
    ) -> Result<Value, Failure> {
        self.check(roots)?;
        let mut cmd = self.command(verify);
        let started = Instant::now();
        let out = run_to_end(&mut cmd, cancel)?;
        let seconds = started.elapsed().as_secs_f64();
        if out.code != Some(0) {
            let tail: Vec<&str> = out.stderr.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Failure::Failed {
                error: format!(
                    "rsync with remote `{}` ({}) failed: {}{}",
                    self.name,
                    self.endpoint(),
                    meaning(out.code, &out.stderr),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{}", tail.join("\n"))
                    }
                ),
                exit_code: out.code,
                outputs: Value::Object(Default::default()),
            });
        }
        let stats = Stats::parse(&out.stdout);
        let files: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(FILE_LINE))
            .filter(|n| !n.ends_with('/'))
            .collect();
        Ok(json!({
            "dst": self.shown_dst(),
            "files": files,
            "bytes": stats.total_size,
            "copied": stats.transferred,
            "skipped": stats.regular.saturating_sub(stats.transferred),
            "backend": "rsync",
            "remote": self.name,
            "direction": self.direction_name(),
            "literal_bytes": stats.literal,
            "matched_bytes": stats.matched,
            "seconds": seconds,
        }))
    }

    /// The far host (the site config's check makes `host` required for
    /// rsync remotes).
    fn host(&self) -> &str {
        self.remote.host.as_deref().unwrap_or("localhost")
    }

    /// `[user@]host:port` as messages show it.
    fn endpoint(&self) -> String {
        let user = self
            .remote
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!("{user}{}:{}", self.host(), self.remote.port.unwrap_or(22))
    }

    /// The rsync command line.
    fn command(&self, verify: bool) -> Command {
        let r = &self.remote;
        let mut ssh = vec![
            "ssh".to_string(),
            "-p".into(),
            r.port.unwrap_or(22).to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "ServerAliveInterval=15".into(),
        ];
        if let Some(kh) = &r.known_hosts {
            ssh.extend(["-o".into(), format!("UserKnownHostsFile={}", expand(kh))]);
        }
        if let Some(id) = &r.identity {
            ssh.extend([
                "-i".into(),
                expand(id),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        let mut cmd = Command::new("rsync");
        cmd.args([
            "--archive",
            "--partial-dir=.beamflow-partial",
            "--mkpath",
            "--safe-links",
            "--protect-args",
            "--stats",
        ]);
        cmd.arg(format!("--out-format={FILE_LINE}%n"));
        if verify {
            cmd.arg("--checksum");
        }
        if let Some(k) = r.bwlimit_kib {
            cmd.arg(format!("--bwlimit={k}"));
        }
        cmd.arg("-e").arg(ssh.join(" "));
        let host = match &r.user {
            Some(u) => format!("{u}@{}", self.host()),
            None => self.host().to_string(),
        };
        match self.direction {
            Direction::Push => {
                cmd.args(&self.srcs);
                cmd.arg(format!("{host}:{}", self.dst));
            }
            Direction::Pull => {
                cmd.args(self.srcs.iter().map(|s| format!("{host}:{s}")));
                cmd.arg(&self.dst);
            }
        }
        cmd
    }
}

fn expand(p: &str) -> String {
    expand_home(p).display().to_string()
}

/// How rsync's `--out-format` marks a line naming a moved file (a stats
/// line never starts so).
const FILE_LINE: &str = "moved: ";

/// What rsync's exit status means, for the step's error. ssh's own
/// `ssh: connect to host` line decides first: whether rsync then exits 255
/// (ssh's status) or 12 (the stream closed under it) is a race.
fn meaning(code: Option<i32>, stderr: &str) -> String {
    let ssh_failed = stderr
        .lines()
        .any(|l| l.starts_with("ssh: connect to host") || l.starts_with("Host key verification"));
    match code {
        None => "killed by a signal".into(),
        Some(c) if c != 0 && ssh_failed => meaning(Some(255), ""),
        Some(255) => {
            "ssh could not connect (host unreachable or refused, host key unknown or changed, \
             or the key was not accepted)"
                .into()
        }
        Some(23) => {
            "some files could not be transferred (missing, unreadable or unwritable)".into()
        }
        Some(24) => "some source files vanished during the transfer".into(),
        Some(30) | Some(35) => "timed out waiting for the far end".into(),
        Some(12) => "the connection broke (protocol data stream error)".into(),
        Some(11) => "a file could not be read or written".into(),
        Some(3) => "a source or destination could not be opened".into(),
        Some(c) => format!("rsync exited with status {c}"),
    }
}

/// The numbers of `--stats` that the step reports.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    regular: u64,
    transferred: u64,
    total_size: u64,
    literal: u64,
    matched: u64,
}

impl Stats {
    fn parse(out: &str) -> Stats {
        let num = |s: &str| -> u64 {
            s.chars()
                .take_while(|c| c.is_ascii_digit() || *c == ',')
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        };
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| num(v.trim_start()))
                .unwrap_or(0)
        };
        // "Number of files: 3 (reg: 2, dir: 1)"
        let regular = out
            .lines()
            .find_map(|l| l.strip_prefix("Number of files:"))
            .and_then(|v| v.split_once("reg: "))
            .map(|(_, r)| num(r))
            .unwrap_or(0);
        Stats {
            regular,
            transferred: field("Number of regular files transferred:"),
            total_size: field("Total file size:"),
            literal: field("Literal data:"),
            matched: field("Matched data:"),
        }
    }
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` in its own process group; on `cancel` the group gets SIGTERM
/// (rsync then keeps the partial file for the next try), then SIGKILL.
fn run_to_end(cmd: &mut Command, cancel: &Cancel) -> Result<Finished, Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // As for shell steps: rsync and ssh must not hold the pilot's sockets.
    // SAFETY: close_fds_on_exec makes only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(beamflow_kernels::inherit::close_fds_on_exec);
    }
    let mut child = cmd.spawn().map_err(|e| {
        Failure::msg(format!(
            "cannot start rsync: {e} (install rsync and openssh-client on this node)"
        ))
    })?;
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let pgid = child.id() as i32;
    let mut term_sent: Option<Instant> = None;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| Failure::msg(format!("rsync: {e}")))?
        {
            break st;
        }
        if cancel.is_cancelled() {
            let signal = match term_sent {
                None => {
                    term_sent = Some(Instant::now());
                    Some(libc::SIGTERM)
                }
                Some(t) if t.elapsed() > Duration::from_secs(3) => Some(libc::SIGKILL),
                Some(_) => None,
            };
            if let Some(sig) = signal {
                // SAFETY: killpg only signals the group this child leads.
                unsafe {
                    libc::killpg(pgid, sig);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if cancel.is_cancelled() {
        return Err(Failure::Cancelled);
    }
    Ok(Finished {
        code: status.code(),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::site::{Remote, TransferPolicy};

    fn error(r: Result<impl std::fmt::Debug, Failure>) -> String {
        match r {
            Err(Failure::Failed { error, .. }) => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    use super::super::loopback::Sshd;

    fn with(remote: Remote) -> TransferPolicy {
        let mut p = TransferPolicy::default();
        p.remotes.insert("far".into(), remote);
        p
    }

    fn go(p: &TransferPolicy, src: &str, dst: &str, cancel: &Cancel) -> Result<Value, Failure> {
        Job::plan(&[src.to_string()], dst, p)
            .unwrap()
            .expect("a remote job")
            .rsync(true, &[], cancel)
    }

    fn blake(p: &Path) -> blake3::Hash {
        blake3::hash(&std::fs::read(p).unwrap())
    }

    /// A tree pushed to the far end and pulled back arrives byte for byte;
    /// a second push moves nothing; paths outside the far roots and a far
    /// end nobody listens on fail naming them.
    #[test]
    fn pushes_and_pulls_a_tree_over_ssh_on_loopback() {
        let sshd = Sshd::start().unwrap();
        let t = tempfile::tempdir().unwrap();
        let (src, far) = (t.path().join("beamline/scan"), t.path().join("far"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.bin"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("sub/b.txt"), b"frames").unwrap();
        let p = with(sshd.remote(&[&far]));
        let cancel = Cancel::default();
        let dst = format!("far:{}/in/", far.display());
        let out = go(&p, src.to_str().unwrap(), &dst, &cancel).unwrap();
        assert_eq!(
            (out["copied"].as_u64(), out["skipped"].as_u64()),
            (Some(2), Some(0)),
            "{out}"
        );
        assert_eq!(out["bytes"], json!(300_006));
        assert_eq!(out["dst"], json!(dst));
        assert_eq!(blake(&far.join("in/scan/a.bin")), blake(&src.join("a.bin")));
        assert_eq!(
            std::fs::read(far.join("in/scan/sub/b.txt")).unwrap(),
            b"frames"
        );
        let again = go(&p, src.to_str().unwrap(), &dst, &cancel).unwrap();
        assert_eq!(
            (again["copied"].as_u64(), again["skipped"].as_u64()),
            (Some(0), Some(2))
        );
        // And back.
        let back = t.path().join("back/");
        let out = go(
            &p,
            &format!("far:{}/in/scan", far.display()),
            back.to_str().unwrap(),
            &cancel,
        )
        .unwrap();
        assert_eq!(out["direction"], json!("pull"));
        assert_eq!(blake(&back.join("scan/a.bin")), blake(&src.join("a.bin")));
        // Outside the far roots: refused before rsync runs.
        let e = error(go(&p, src.to_str().unwrap(), "far:/etc/beamflow/", &cancel));
        assert!(
            e.contains("far:/etc/beamflow/: destination is outside remote `far`'s allowed roots"),
            "{e}"
        );
        // Nobody listening: ssh's failure, named.
        let mut closed = sshd.remote(&[]);
        closed.port = Some(
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        );
        let e = error(go(&with(closed), src.to_str().unwrap(), &dst, &cancel));
        assert!(
            e.contains("rsync with remote `far` (127.0.0.1:")
                && e.contains("ssh could not connect"),
            "{e}"
        );
    }

    /// rsync killed with SIGKILL mid-file leaves the far end's partial
    /// file aside (never under the final name); the next try reuses its
    /// bytes and ends with the file intact.
    #[test]
    fn a_transfer_killed_mid_file_resumes_from_its_partial() {
        let sshd = Sshd::start().unwrap();
        let t = tempfile::tempdir().unwrap();
        let (src, far) = (t.path().join("big.bin"), t.path().join("far"));
        let mut data = vec![0u8; 32 << 20];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&src, &data).unwrap();
        let mut slow = sshd.remote(&[&far]);
        slow.bwlimit_kib = Some(8 * 1024);
        let dst = format!("far:{}/", far.display());
        let cancel = Cancel::default();
        let job = Job::plan(&[src.display().to_string()], &dst, &with(slow))
            .unwrap()
            .unwrap();
        let run = std::thread::spawn(move || job.rsync(true, &[], &cancel));
        // Wait until a good part has arrived, then SIGKILL the rsync.
        let partial = far.join(".beamflow-partial/big.bin");
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let got = std::fs::read_dir(&far)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0);
            if got > 6 << 20 {
                break;
            }
            assert!(Instant::now() < until, "the transfer did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // This side's rsync only (the far one is `rsync --server …`).
        let pattern = format!("^rsync --archive.*{}", far.display());
        let killed = Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .status()
            .unwrap();
        assert!(killed.success());
        let e = error(run.join().unwrap());
        assert!(e.contains("killed by a signal"), "{e}");
        // The far receiver keeps what it had, aside.
        let until = Instant::now() + Duration::from_secs(10);
        while !partial.exists() {
            assert!(Instant::now() < until, "no partial file kept");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !far.join("big.bin").exists(),
            "no partial under the final name"
        );
        let kept = std::fs::metadata(&partial).unwrap().len();
        let out = go(
            &with(sshd.remote(&[&far])),
            src.to_str().unwrap(),
            &dst,
            &Cancel::default(),
        )
        .unwrap();
        assert!(
            out["matched_bytes"].as_u64().unwrap() >= kept / 2,
            "{out} after {kept} kept"
        );
        assert_eq!(blake(&far.join("big.bin")), blake3::hash(&data));
        assert!(!partial.exists());
    }

    /// ssh's refusal is named whichever of ssh (255) or rsync's stream
    /// (12) reports it first.
    #[test]
    fn a_refused_connection_is_named_whatever_status_rsync_exits_with() {
        let refused = "ssh: connect to host 127.0.0.1 port 9: Connection refused\n\
                       rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n";
        for code in [12, 255] {
            assert!(meaning(Some(code), refused).starts_with("ssh could not connect"));
        }
        assert!(meaning(Some(12), "rsync: read error\n").starts_with("the connection broke"));
    }

    #[test]
    fn stats_are_read_from_rsyncs_summary() {
        let out = "moved: sub/\nmoved: sub/a.bin\n\nNumber of files: 3 (reg: 2, dir: 1)\n\
                   Number of created files: 2 (reg: 1, dir: 1)\n\
                   Number of regular files transferred: 1\n\
                   Total file size: 1,048,581 bytes\n\
                   Total transferred file size: 1,048,576 bytes\n\
                   Literal data: 524,288 bytes\nMatched data: 524,288 bytes\n";
        assert_eq!(
            Stats::parse(out),
            Stats {
                regular: 2,
                transferred: 1,
                total_size: 1_048_581,
                literal: 524_288,
                matched: 524_288,
            }
        );
    }
}
