//! Debian's sshd on a loopback port, with a host key and a user key made
//! for it, stopped when dropped: the far end of the rsync backend's tests
//! and of `beamflow bench transfer`, where no other facility is at hand.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::site::Remote;

pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    /// Starts sshd on a free loopback port (openssh-server must be
    /// installed: scripts/setup.sh does it).
    pub fn start() -> anyhow::Result<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        anyhow::ensure!(
            sshd.exists(),
            "/usr/sbin/sshd is missing: scripts/setup.sh installs openssh-server"
        );
        let dir = tempfile::Builder::new()
            .prefix("beamflow-sshd-")
            .tempdir()?;
        let d = dir.path();
        for key in ["host", "user"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .context("ssh-keygen (openssh-client)")?
                .success();
            anyhow::ensure!(ok, "ssh-keygen failed");
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PidFile {d}/sshd.pid\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        // Privilege separation wants its directory when sshd runs as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log"))?)
            .spawn()
            .context("starting sshd")?;
        let mut me = Sshd { port, child, dir };
        let d = me.dir.path().to_path_buf();
        let host_key = std::fs::read_to_string(d.join("host.pub"))?;
        let mut parts = host_key.split_whitespace();
        let (kind, key) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kind} {key}\n"),
        )?;
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until || me.child.try_wait()?.is_some() {
                anyhow::bail!(
                    "sshd did not start: {}",
                    std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user key and known-hosts file a client uses.
    pub fn identity(&self) -> std::path::PathBuf {
        self.dir.path().join("user")
    }
    pub fn known_hosts(&self) -> std::path::PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// A remote for this sshd, its roots `roots`.
    pub fn remote(&self, roots: &[&Path]) -> Remote {
        Remote {
            host: Some("127.0.0.1".into()),
            port: Some(self.port),
            identity: Some(self.identity().display().to_string()),
            known_hosts: Some(self.known_hosts().display().to_string()),
            roots: roots.iter().map(|r| r.display().to_string()).collect(),
            ..Remote::default()
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
