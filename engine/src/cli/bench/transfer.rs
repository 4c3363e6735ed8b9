//! `beamflow bench transfer`: stage-in throughput of the rsync backend
//! against plain `rsync` over the same SSH connection settings, on an sshd
//! this bench starts on a loopback port (Debian's openssh-server). Each
//! repeat moves the same files to an empty directory both ways, in
//! alternating order; the outputs are checked byte for byte.
//!
//! Two pairs: with checksums (the backend's default `verify`, rsync
//! `--checksum`) and without (`verify = false`, rsync's quick check).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use super::alloc::median;
use crate::actions::transfer::{copy, loopback::Sshd};
use crate::actions::{Cancel, Failure};
use crate::site::TransferPolicy;

#[derive(clap::Args)]
pub struct TransferBench {
    /// Total size of the files moved, MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// How many files.
    #[arg(long, default_value_t = 8)]
    pub files: u64,
    /// Timed repeats of each way.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

impl TransferBench {
    pub async fn run(self) -> anyhow::Result<Value> {
        let sshd = Sshd::start()?;
        let tmp = tempfile::Builder::new()
            .prefix("beamflow-bench-transfer-")
            .tempdir()?;
        let src = tmp.path().join("src");
        write_files(&src, self.files, self.mib << 20)?;
        let bytes = (self.mib << 20) as f64;
        let far = tmp.path().join("far");
        std::fs::create_dir_all(&far)?;
        let mut policy = TransferPolicy::default();
        policy
            .remotes
            .insert("far".into(), sshd.remote(&[far.as_path()]));
        let mut out = serde_json::Map::new();
        for verify in [true, false] {
            let (mut plain, mut ours) = (Vec::new(), Vec::new());
            for i in 0..self.repeats.max(1) {
                let plain_dst = far.join("plain");
                let ours_dst = far.join("ours");
                for d in [&plain_dst, &ours_dst] {
                    let _ = std::fs::remove_dir_all(d);
                }
                let run_plain = || -> anyhow::Result<f64> {
                    settle();
                    let t = Instant::now();
                    let st = plain_rsync(&sshd, &src, &plain_dst, verify)?;
                    anyhow::ensure!(st, "plain rsync failed");
                    Ok(t.elapsed().as_secs_f64())
                };
                let t_plain;
                let t_ours;
                if i % 2 == 0 {
                    t_plain = run_plain()?;
                    t_ours = ours_rsync(&policy, &src, &ours_dst, verify).await?;
                } else {
                    t_ours = ours_rsync(&policy, &src, &ours_dst, verify).await?;
                    t_plain = run_plain()?;
                }
                same_tree(&src, &plain_dst.join("src"))?;
                same_tree(&src, &ours_dst.join("src"))?;
                plain.push(bytes / t_plain / 1e6);
                ours.push(bytes / t_ours / 1e6);
            }
            let (p, o) = (median(plain.clone()), median(ours.clone()));
            let key = if verify { "checksum" } else { "quick_check" };
            out.insert(
                key.into(),
                json!({
                    "plain_rsync_mb_s": plain,
                    "beamflow_rsync_mb_s": ours,
                    "plain_p50_mb_s": p,
                    "beamflow_p50_mb_s": o,
                    "ratio_p50": o / p,
                }),
            );
        }
        out.insert("mib".into(), json!(self.mib));
        out.insert("files".into(), json!(self.files));
        out.insert("repeats".into(), json!(self.repeats.max(1)));
        Ok(Value::Object(out))
    }
}

/// Writes back what the previous transfer left dirty, so that neither
/// way pays for the other's writes.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `n` files of incompressible bytes, `total` in all, under `dir`.
fn write_files(dir: &Path, n: u64, total: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let n = n.max(1);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let len = total / n + if i == 0 { total % n } else { 0 };
        let mut buf = vec![0u8; len as usize];
        for chunk in buf.chunks_mut(8) {
            // xorshift64: fast, and rsync and ssh cannot shrink it.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("frames-{i:03}.bin")), buf)?;
    }
    Ok(())
}

/// Plain rsync with the ssh settings the backend uses.
fn plain_rsync(sshd: &Sshd, src: &Path, dst: &Path, checksum: bool) -> anyhow::Result<bool> {
    let ssh = format!(
        "ssh -p {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {} -o IdentitiesOnly=yes",
        sshd.port(),
        sshd.known_hosts().display(),
        sshd.identity().display()
    );
    let mut cmd = Command::new("rsync");
    cmd.args(["-a", "--partial", "--mkpath"]);
    if checksum {
        cmd.arg("--checksum");
    }
    let st = cmd
        .arg("-e")
        .arg(ssh)
        .arg(src)
        .arg(format!("127.0.0.1:{}/", dst.display()))
        .status()?;
    Ok(st.success())
}

/// The backend, as a `transfer` step runs it: seconds.
async fn ours_rsync(
    policy: &TransferPolicy,
    src: &Path,
    dst: &Path,
    verify: bool,
) -> anyhow::Result<f64> {
    settle();
    let t = Instant::now();
    copy(
        vec![src.display().to_string()],
        format!("far:{}/", dst.display()),
        verify,
        policy,
        &Cancel::default(),
    )
    .await
    .map_err(|e| match e {
        Failure::Failed { error, .. } => anyhow::anyhow!("{error}"),
        Failure::Cancelled => anyhow::anyhow!("cancelled"),
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Every file under `a` is under `b` with the same bytes.
fn same_tree(a: &Path, b: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(a)? {
        let p: PathBuf = e?.path();
        let q = b.join(p.file_name().unwrap_or_default());
        let (x, y) = (
            blake3::hash(&std::fs::read(&p)?),
            blake3::hash(&std::fs::read(&q)?),
        );
        anyhow::ensure!(x == y, "{} differs from {}", q.display(), p.display());
    }
    Ok(())
}
