//! The Slurm test cluster (scripts/slurm-cluster.sh) with three nodes,
//! started on first use if it is not up: root and Debian's packages, as in CI.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Starts the cluster if needed and points this process's Slurm clients
/// (and every child it spawns) at it; returns its slurm.conf.
pub fn cluster() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/slurm-cluster.sh"))
            .arg("start")
            .env("BEAMFLOW_SLURM_NODES", "3")
            .output()
            .expect("run scripts/slurm-cluster.sh");
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir =
            std::env::var("BEAMFLOW_SLURM_DIR").unwrap_or_else(|_| "/tmp/beamflow-slurm".into());
        let conf = PathBuf::from(dir).join("etc/slurm.conf");
        // Clients find the cluster through SLURM_CONF (set once, before any
        // command runs).
        std::env::set_var("SLURM_CONF", &conf);
        conf
    })
}
