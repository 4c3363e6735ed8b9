//! Steps on several nodes: the nodes a pilot holds and the command line
//! that starts a step's ranks on some of them (srun on Slurm, mpiexec on
//! PBS — Cray PALS or MPICH's Hydra —, OpenMPI's mpirun elsewhere), with
//! the site's launcher flags (CPU binding, GPU affinity) added verbatim.

use std::process::Command;

use crate::resources::Resources;

/// Which program starts ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LauncherKind {
    Srun,
    Mpiexec,
    Mpirun,
}

impl LauncherKind {
    /// The batch system's own: srun inside a Slurm job, mpiexec inside a
    /// PBS job, OpenMPI's mpirun anywhere else.
    pub fn detect() -> LauncherKind {
        if std::env::var_os("SLURM_JOB_ID").is_some() {
            LauncherKind::Srun
        } else if std::env::var_os("PBS_JOBID").is_some() {
            LauncherKind::Mpiexec
        } else {
            LauncherKind::Mpirun
        }
    }
}

/// How this pilot starts a step across nodes.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub kind: LauncherKind,
    /// The site's flags, split like a shell would.
    pub flags: Vec<String>,
}

impl Launcher {
    pub fn new(kind: LauncherKind, flags: Option<&str>) -> anyhow::Result<Launcher> {
        let flags = match flags {
            None => vec![],
            Some(f) => shlex::split(f)
                .ok_or_else(|| anyhow::anyhow!("--launcher-flags: unbalanced quotes in `{f}`"))?,
        };
        Ok(Launcher { kind, flags })
    }

    /// The command that starts `r.ranks_per_node` ranks on each of `hosts`;
    /// the step's program follows it.
    pub fn argv(&self, hosts: &[String], r: &Resources) -> Vec<String> {
        let nodes = hosts.len();
        let per = r.ranks_per_node.max(1) as usize;
        let ranks = (nodes * per).to_string();
        let threads = (r.cpus as usize / per).max(1).to_string();
        let mut a: Vec<String> = match self.kind {
            // --overlap: the pilot may itself run inside a job step.
            LauncherKind::Srun => vec![
                "srun".into(),
                "--overlap".into(),
                format!("--nodes={nodes}"),
                format!("--ntasks={ranks}"),
                format!("--ntasks-per-node={per}"),
                format!("--cpus-per-task={threads}"),
                format!("--nodelist={}", hosts.join(",")),
            ],
            LauncherKind::Mpiexec => vec![
                "mpiexec".into(),
                "-n".into(),
                ranks,
                "--ppn".into(),
                per.to_string(),
                "--hosts".into(),
                hosts.join(","),
            ],
            LauncherKind::Mpirun => {
                // One entry per node with its slots; a host named twice
                // (one machine standing in for two) gets both counts.
                let mut slots: Vec<(String, usize)> = Vec::new();
                for h in hosts {
                    match slots.iter_mut().find(|(n, _)| n == h) {
                        Some((_, s)) => *s += per,
                        None => slots.push((h.clone(), per)),
                    }
                }
                let list: Vec<String> = slots.iter().map(|(h, s)| format!("{h}:{s}")).collect();
                let mut a = vec![
                    "mpirun".into(),
                    "-np".into(),
                    ranks,
                    "--host".into(),
                    list.join(","),
                ];
                // OpenMPI binds each of a few ranks to one core: a rank's
                // threads would share it.
                if threads != "1" {
                    a.extend(["--bind-to".into(), "none".into()]);
                }
                a
            }
        };
        a.extend(self.flags.iter().cloned());
        a
    }
}

/// The nodes of the batch job this process runs in, its own first:
/// Slurm's node list (expanded by `scontrol show hostnames`) or the unique
/// lines of PBS's node file.
pub fn job_hosts() -> anyhow::Result<Vec<String>> {
    let mut hosts = if let Ok(list) = std::env::var("SLURM_JOB_NODELIST") {
        let out = Command::new("scontrol")
            .args(["show", "hostnames", &list])
            .output()
            .map_err(|e| anyhow::anyhow!("scontrol show hostnames {list}: {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "scontrol show hostnames {list}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    } else if let Ok(file) = std::env::var("PBS_NODEFILE") {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("PBS_NODEFILE {file}: {e}"))?;
        let mut seen = Vec::new();
        for h in text.split_whitespace() {
            if !seen.iter().any(|s: &String| s == h) {
                seen.push(h.to_string());
            }
        }
        seen
    } else {
        anyhow::bail!(
            "--span-job: not inside a Slurm or PBS job (no SLURM_JOB_NODELIST or PBS_NODEFILE); name the nodes with --hosts"
        );
    };
    if hosts.is_empty() {
        anyhow::bail!("--span-job: the batch job lists no nodes");
    }
    // Slurm runs the batch script on the first node, PBS on the first in
    // its file — but say so from the node's own name where it is known.
    let me = std::env::var("SLURMD_NODENAME")
        .ok()
        .unwrap_or_else(crate::host::hostname);
    if let Some(i) = hosts
        .iter()
        .position(|h| h == &me || h.split('.').next() == me.split('.').next())
    {
        let head = hosts.remove(i);
        hosts.insert(0, head);
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: u32, per: u32) -> Resources {
        Resources {
            cpus,
            gpus: 0,
            memory_mb: 0,
            nodes: 2,
            ranks_per_node: per,
        }
    }

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_launcher_places_ranks_per_node_on_the_named_hosts() {
        let srun =
            Launcher::new(LauncherKind::Srun, Some("--cpu-bind=cores --gpu-bind=none")).unwrap();
        assert_eq!(
            srun.argv(&hosts(&["n2", "n3"]), &res(8, 4)).join(" "),
            "srun --overlap --nodes=2 --ntasks=8 --ntasks-per-node=4 --cpus-per-task=2 --nodelist=n2,n3 --cpu-bind=cores --gpu-bind=none"
        );
        let pals =
            Launcher::new(LauncherKind::Mpiexec, Some("--depth=64 --cpu-bind depth")).unwrap();
        assert_eq!(
            pals.argv(&hosts(&["x1", "x2"]), &res(64, 1)).join(" "),
            "mpiexec -n 2 --ppn 1 --hosts x1,x2 --depth=64 --cpu-bind depth"
        );
        let ompi = Launcher::new(LauncherKind::Mpirun, Some("'--mca' btl self,vader")).unwrap();
        assert_eq!(
            ompi.argv(&hosts(&["localhost", "localhost"]), &res(1, 1)),
            hosts(&[
                "mpirun",
                "-np",
                "2",
                "--host",
                "localhost:2",
                "--mca",
                "btl",
                "self,vader"
            ])
        );
        assert!(Launcher::new(LauncherKind::Srun, Some("--x 'open")).is_err());
    }
}
