//! `beamflow pilot`: a worker that runs the tasks the server pushes to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::client::Client;
use super::{duration, Ctx};

#[derive(Args)]
pub struct PilotArgs {
    /// The pilot's name in listings (default: host and process id).
    #[arg(long)]
    name: Option<String>,
    /// Cores to offer (default: all usable).
    #[arg(long)]
    cpus: Option<u32>,
    /// GPU indices to offer, e.g. 0,1,2,3 (default: detected; "" for none).
    #[arg(long, value_delimiter = ',')]
    gpus: Option<Vec<String>>,
    /// Memory to offer, e.g. 64GB (default: all).
    #[arg(long)]
    memory: Option<String>,
    /// Targets served (default: cpu, edge, realtime, and gpu when GPUs exist).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Tasks accepted beyond free resources (default: 16).
    #[arg(long)]
    prefetch: Option<u32>,
    /// Leave after this long without work ("0s": never).
    #[arg(long, default_value = "5m", value_parser = duration)]
    idle_timeout: Duration,
    /// Allocation length when the batch system does not say.
    #[arg(long, value_parser = duration)]
    walltime: Option<Duration>,
    /// When the allocation ends, in Unix seconds (job scripts pass it).
    #[arg(long)]
    walltime_end: Option<i64>,
    /// The reservation the pilot's job runs in (default: SLURM_JOB_RESERVATION).
    #[arg(long)]
    reservation: Option<String>,
    /// The site this pilot runs at (job scripts pass it; default: the
    /// server's own).
    #[arg(long)]
    site: Option<String>,
    /// The pilot's job may be preempted at any time (job scripts of a
    /// `preemptable` target pass it).
    #[arg(long)]
    preemptable: bool,
    /// The variable that restricts a task to its GPUs: CUDA_VISIBLE_DEVICES
    /// (NVIDIA), ROCR_VISIBLE_DEVICES (AMD), ZE_AFFINITY_MASK (Intel).
    #[arg(long)]
    gpu_env: Option<String>,
    /// Read the API token from this file (job scripts use it: a token on the
    /// command line would show in `ps`).
    #[arg(long, env = "BEAMFLOW_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Take no new work this long before the walltime ends.
    #[arg(long, default_value = "60s", value_parser = duration)]
    drain_margin: Duration,
    /// Give up when the server stays unreachable this long.
    #[arg(long, default_value = "30m", value_parser = duration)]
    server_lost_timeout: Duration,
    /// Hold every node of the batch job (from SLURM_JOB_NODELIST or
    /// PBS_NODEFILE): steps with `nodes > 1` run across them as MPI ranks.
    #[arg(long)]
    span_job: bool,
    /// Hold these nodes, this one first (a name may repeat where one
    /// machine stands in for several): steps with `nodes > 1` run across them.
    #[arg(long, value_delimiter = ',', conflicts_with = "span_job")]
    hosts: Option<Vec<String>>,
    /// What starts a step's ranks (default: srun in a Slurm job, mpiexec in
    /// a PBS job, mpirun elsewhere).
    #[arg(long, value_enum)]
    launcher: Option<crate::pilot::launch::LauncherKind>,
    /// Flags added to every launch, e.g. "--cpu-bind=cores" (the site
    /// target's `launcher`).
    #[arg(long, allow_hyphen_values = true)]
    launcher_flags: Option<String>,
}

impl PilotArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        // A token given on the command line is used as it is; one read from
        // a file is read again when the server says it changed.
        let token_file = match (&cx.token, &self.token_file) {
            (Some(_), _) => None,
            (None, Some(f)) => Some(f.clone()),
            (None, None) => Some(crate::home::pilot_token_file(&cx.home)),
        };
        let token = match (&cx.token, &token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => crate::home::read_token(f)?,
            (None, None) => unreachable!("a token or its file"),
        };
        let c = Client::discover(
            &cx.home,
            cx.url.clone(),
            Some(token.clone()),
            cx.server_cert.clone(),
        )?;
        let gpus = match self.gpus {
            None => None,
            Some(list) => Some(
                list.iter()
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        s.trim()
                            .parse::<u32>()
                            .map_err(|_| anyhow::anyhow!("--gpus: `{s}` is not a GPU index"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        let memory_mb = self
            .memory
            .as_deref()
            .map(crate::units::parse_memory_mb)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
        crate::pilot::run(crate::pilot::PilotOptions {
            url: c.url.clone(),
            trust: c.trust.clone(),
            token,
            token_file,
            name: self.name,
            cpus: self.cpus,
            gpus,
            memory_mb,
            targets: self.targets,
            prefetch: self.prefetch,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            walltime: self.walltime,
            walltime_end: self.walltime_end,
            reservation: self.reservation,
            site: self.site,
            preemptable: self.preemptable,
            gpu_env: self.gpu_env,
            drain_margin: self.drain_margin,
            server_lost_timeout: self.server_lost_timeout,
            nodes: crate::pilot::NodeOptions {
                hosts: self.hosts,
                span_job: self.span_job,
                launcher: self.launcher,
                launcher_flags: self.launcher_flags,
            },
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}
