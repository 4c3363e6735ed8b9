//! The `beamflow` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use serde_json::{json, Value};

use crate::client::Client;
use crate::store::{CatalogRow, Durability, FlowRow, PilotRow, RunDetail, RunRow};
use crate::util::{default_home, fmt_secs, fmt_ts};

#[derive(Parser)]
#[command(
    name = "beamflow",
    version,
    about = "Flows from instruments to supercomputers, on pilot jobs"
)]
struct Cli {
    /// State directory (store, token, server.json, runs).
    #[arg(long, global = true, env = "BEAMFLOW_HOME")]
    home: Option<PathBuf>,
    /// Server URL (default: read from HOME/server.json).
    #[arg(long, global = true, env = "BEAMFLOW_URL")]
    url: Option<String>,
    /// The server's certificate (PEM): an https server presenting any other
    /// is refused (default: the file server.json names, else
    /// HOME/tls/cert.pem). Pilots on other hosts get a copy of it.
    #[arg(long, global = true, env = "BEAMFLOW_SERVER_CERT")]
    server_cert: Option<PathBuf>,
    /// API token (default: read from HOME/token).
    #[arg(long, global = true, env = "BEAMFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: HTTP API, pilot connections, durable store.
    Server(ServerArgs),
    /// Run a pilot that executes tasks pushed by the server.
    Pilot(PilotArgs),
    /// Register, list, show and validate flows.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Start a run of a flow (a registered name or a .toml file).
    Run(RunArgs),
    /// List, show, cancel, retry and wait for runs.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Start a flow for each new file (or batch of files) in a directory,
    /// once the file is complete; each file once, across restarts.
    Watch(WatchArgs),
    /// Where a flow's runs spent their time: per-step medians and
    /// quartiles, runtime box plots and runs in flight over time (PNG).
    Report(ReportArgs),
    /// Search the catalog of published records.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// List pilots the server knows.
    Pilots,
    /// Print the link that opens the web page (runs, timelines, catalog,
    /// reports, pilots) signed in with this server's token.
    Ui,
    /// Check this machine, the server, the token and a site config, and say
    /// precisely what is wrong (exit 1 when a check fails).
    Doctor(crate::doctor::DoctorArgs),
    /// Tokens for people and services (viewer, submitter), and rotating
    /// the home token without restarting anything.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Keeping the server's store in bounds (admin token).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// List the native kernels flows can use.
    #[command(subcommand)]
    Kernel(KernelCmd),
    /// Server and pilot in one process, a generated dataset, a real flow end to end.
    Demo {
        /// Keep the demo's state in this directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Benchmarks: `engine` measures the engine itself.
    Bench(BenchArgs),
    /// Check and show site configs (site-configs/NAME.toml).
    #[command(subcommand)]
    Site(crate::alloc::cmd::SiteCmd),
    /// Allocation queues: pilot jobs submitted to PBS or Slurm on demand.
    #[command(subcommand)]
    Alloc(crate::alloc::cmd::AllocCmd),
}

#[derive(Args)]
struct ServerArgs {
    #[arg(long, default_value = "127.0.0.1:7878")]
    bind: std::net::SocketAddr,
    /// The store: a SQLite file (default HOME/beamflow.db) or a PostgreSQL
    /// database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (through a
    /// Unix socket: `postgres://USER@localhost/DB?host=/run/postgresql`).
    /// One server per database.
    #[arg(
        long = "db",
        visible_alias = "store",
        env = "BEAMFLOW_DB",
        hide_env_values = true
    )]
    db: Option<String>,
    /// Where run directories go (default HOME/runs); must be visible to pilots.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Site config (site-configs/NAME.toml); default: this machine, no limits.
    #[arg(long)]
    site: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "normal")]
    durability: Durability,
    /// A pilot silent or disconnected this long is lost and its tasks requeued.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pilot_timeout: Duration,
    /// How often pilots send heartbeats.
    #[arg(long, default_value = "2s", value_parser = duration)]
    heartbeat: Duration,
    /// The URL pilots in batch jobs connect to, when compute nodes reach this
    /// server by another name than the bound address (a site config's
    /// `pilot.server_url` wins).
    #[arg(long)]
    advertise_url: Option<String>,
    /// How often allocation jobs nobody reports on are polled with
    /// squeue/qstat (pilots report start and end themselves).
    #[arg(long, default_value = "60s", value_parser = duration)]
    alloc_poll: Duration,
    /// A name or address clients and pilots use for this server, put in
    /// the certificate generated on first start (repeatable; localhost,
    /// 127.0.0.1, ::1 and the host name are always in it).
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Serve this certificate (PEM, its chain after it) instead of the one
    /// generated in HOME/tls/.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_names")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP: the token and all data cross the network in clear
    /// text. Only behind a proxy that terminates TLS, or on loopback.
    #[arg(long, conflicts_with_all = ["tls_names", "tls_cert", "tls_key"])]
    no_tls: bool,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token; it is printed once (the server keeps only a hash).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: crate::server::tokens::Role,
    },
    /// The named tokens and their roles.
    List,
    /// Stop accepting NAME's token.
    Revoke { name: String },
    /// A new home token (written to BEAMFLOW_HOME/token by the server); the
    /// old one stays good for the grace period, while pilots and clients
    /// re-read the file.
    Rotate {
        #[arg(long, default_value = "10m", value_parser = duration)]
        grace: Duration,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Delete finished runs (their attempts and events), pilots gone and
    /// log lines older than the cut-off from the store, after writing the
    /// runs to an archive file beside it (HOME/archive/*.jsonl). Catalog
    /// records and the runs' directories stay.
    Prune {
        /// Age of the newest run that goes, e.g. 30d, 12h.
        #[arg(long, value_parser = duration)]
        older_than: Duration,
        /// Delete without writing the archive.
        #[arg(long)]
        no_archive: bool,
        /// Count what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct PilotArgs {
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

#[derive(Subcommand)]
enum FlowCmd {
    /// Validate and store flow files (a changed flow needs a new version).
    Register { files: Vec<PathBuf> },
    /// Registered flows.
    List,
    /// One flow's definition.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Check flow files without a server.
    Validate {
        files: Vec<PathBuf>,
        /// Also check targets, limits and site.* variables against a site.
        #[arg(long)]
        site: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Flow name, or a path to a flow file (registered first).
    flow: String,
    /// Input as a JSON file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Input values, KEY=VALUE (repeatable; typed by the flow's input schema).
    #[arg(long = "set")]
    set: Vec<String>,
    #[arg(long)]
    version: Option<u32>,
    /// Wait for the run to finish and print its timing table.
    #[arg(long)]
    wait: bool,
    /// Server and pilot in this process: no server needed.
    #[arg(long)]
    local: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// The flow's name.
    #[arg(long)]
    flow: String,
    /// Only runs created since: a duration ago (`2h`, `3d`) or a time
    /// (`2026-12-01T08:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many of the newest runs.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Where the PNGs go.
    #[arg(long, short = 'o', default_value = ".")]
    out: PathBuf,
    /// No PNGs.
    #[arg(long)]
    no_plots: bool,
}

/// `--since`: a duration ago or a time, as µs since the epoch.
fn since_us(s: &str) -> anyhow::Result<i64> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(d) => now - d,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow::anyhow!(
                "--since `{s}`: give a duration (2h, 3d) or a time (2026-12-01T08:00:00Z)"
            )
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

#[derive(Args)]
struct WatchArgs {
    /// The directory the instrument writes to.
    dir: PathBuf,
    /// Flow name, or a flow file (registered first).
    #[arg(long)]
    flow: String,
    /// Glob on file names, e.g. `*.h5` (with --recursive: on the path below DIR).
    #[arg(long, default_value = "*")]
    pattern: String,
    /// Watch subdirectories too.
    #[arg(long)]
    recursive: bool,
    /// Files per run (one run per 512 images: --batch 512).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How long a closed file must stay unchanged to count as complete.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: std::time::Duration,
    /// Start a run for a partial batch whose oldest file waited this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_after: Option<std::time::Duration>,
    /// The run input as a JSON template: {{ file }}, {{ files | tojson }},
    /// {{ count }}, {{ dir }} (default {"file": "{{ file }}"}, or
    /// {"files": [...]} with --batch).
    #[arg(long)]
    input_template: Option<String>,
    /// Scan at this interval instead of inotify (GPFS, Lustre, NFS).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll: Option<std::time::Duration>,
    /// State file (default: HOME/watch/<hash of dir, flow, pattern>.sqlite).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Stop after starting this many runs.
    #[arg(long)]
    max_runs: Option<usize>,
    /// A follow-up flow (name or file), started each time the runs started
    /// since the last one add up to --when.
    #[arg(long, requires = "when")]
    then: Option<String>,
    /// `steps.STEP.outputs.KEY >= N`: the output summed over those runs.
    #[arg(long, requires = "then")]
    when: Option<String>,
    /// The follow-up's input template: also {{ runs | tojson }} and {{ total }}
    /// (default {"files": [...]}).
    #[arg(long)]
    then_input_template: Option<String>,
}

#[derive(Subcommand)]
enum RunsCmd {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A run's steps, attempts and timing table.
    Show {
        id: u64,
    },
    Cancel {
        id: u64,
    },
    /// Re-run the failed or cancelled steps of a run.
    Retry {
        id: u64,
    },
    /// Wait until runs finish (exit 1 if any did not succeed).
    Wait {
        ids: Vec<u64>,
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum CatalogCmd {
    /// Records matching every word of TEXT and every --field KEY=VALUE.
    Search {
        text: Option<String>,
        /// Dotted path into the record, e.g. fields.sample=silica or input.src=/data/x.
        #[arg(long = "field")]
        fields: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

// Parsed once per process: the size of the XPCS arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum KernelCmd {
    List,
    /// Run an XPCS kernel on files, outside any flow.
    #[command(subcommand)]
    Xpcs(crate::xpcs::XpcsCmd),
    /// HEDM Bragg peaks: search and pseudo-Voigt fit, synthetic frames.
    #[command(subcommand)]
    Hedm(crate::hedm::HedmCmd),
    /// Ptychography: reconstruction (ePIE, rPIE, DM, LSQ-ML), synthetic datasets.
    #[command(subcommand)]
    Ptycho(crate::ptycho::PtychoCmd),
    /// BraggNN: synthetic training patches, training.
    #[command(subcommand)]
    Braggnn(crate::braggnn::BraggnnCmd),
    /// One flow kernel with its parameters from a file, as the ranks of a
    /// step on several nodes run it (`--mpi` under srun/mpiexec/mpirun).
    Step(crate::kernel_step::StepArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure: `suite` (the default: the machine's roofs, then
    /// every kernel at a standard size on each backend, placed under the
    /// roofline), `compare A.json B.json` (two suite results as ratios),
    /// `engine` (tasks/s, latency), `xpcs` (kernel,
    /// end-to-end and two-time speed on a synthetic dataset), `hedm` (peak
    /// search and fit), `ptycho` (engines' time per iteration and error) or
    /// `alloc` (wait for a pilot submitted through the site's batch
    /// scheduler) or `braggnn` (inference and training throughput in
    /// libtorch, ONNX Runtime and PyTorch; frames end to end) or `store`
    /// (the database's writes, reads and pruning at `--tasks` attempts).
    #[arg(value_parser = ["suite", "compare", "engine", "xpcs", "alloc", "hedm", "ptycho", "braggnn", "store"], default_value = "suite")]
    name: String,
    /// compare: the two `beamflow bench --json` results, A then B.
    files: Vec<PathBuf>,
    /// suite: where bench.json and roofline.png go.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// suite: untimed runs of each case before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// suite: timed runs of each case.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// ptycho: dataset preset (tiny, small, medium, large).
    #[arg(long, default_value = "medium")]
    dataset: String,
    /// ptycho: iterations per engine.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// ptycho: engines to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "rpie,epie,dm,lsqml")]
    engines: Vec<beamflow_kernels::ptycho::Engine>,
    /// ptycho, braggnn: thread counts to run with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// braggnn: inference batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,64,512,4096")]
    batches: Vec<usize>,
    /// braggnn: patches per inference measurement.
    #[arg(long, default_value_t = 8192)]
    patches: usize,
    /// braggnn: training patches (80 % trained on) and epochs.
    #[arg(long, default_value_t = 20_000)]
    train_patches: usize,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// hedm: peaks per frame.
    #[arg(long, default_value_t = 300)]
    peaks: usize,
    /// hedm: polar (R, Eta) peaks instead of cartesian.
    #[arg(long)]
    polar: bool,
    /// alloc: the site (name or file) whose scheduler is measured.
    #[arg(long, default_value = "local-slurm")]
    site: String,
    /// alloc: the site's target.
    #[arg(long, default_value = "cpu")]
    target: String,
    /// alloc: cold samples (each waits for the previous pilot to leave).
    #[arg(long, default_value_t = 3)]
    cold: usize,
    /// alloc: runs on the warm pilot.
    #[arg(long, default_value_t = 20)]
    warm: usize,
    /// suite: small, medium or large (default small); xpcs, hedm: the
    /// detector side in pixels (xpcs 512, hedm 2048).
    #[arg(long)]
    size: Option<String>,
    /// xpcs, hedm, braggnn: frames in the dataset (xpcs 2000, hedm and braggnn 4).
    #[arg(long)]
    frames: Option<usize>,
    /// xpcs: frames for the two-time case.
    #[arg(long, default_value_t = 1000)]
    twotime_frames: usize,
    /// xpcs, hedm: keep (and reuse) the generated dataset in this directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// engine: noop kernel tasks in the throughput burst; store: attempts
    /// written before the reads are timed (e.g. 1000000).
    #[arg(long, default_value_t = 20000)]
    tasks: usize,
    /// store: an empty PostgreSQL database (postgres://…) to measure
    /// instead of a temporary SQLite file.
    #[arg(long)]
    db: Option<String>,
    /// `shell true` tasks in the throughput burst.
    #[arg(long, default_value_t = 3000)]
    shell_tasks: usize,
    /// Sequential 4-step runs for the latency figures.
    #[arg(long, default_value_t = 200)]
    latency_runs: usize,
    #[arg(long, default_value_t = 1)]
    pilots: usize,
    #[arg(long)]
    prefetch: Option<u32>,
    #[arg(long, value_enum, default_value = "normal")]
    durability: Durability,
}

/// `--size` as a detector side for the xpcs and hedm benches.
fn pixels(size: &Option<String>, default: usize) -> anyhow::Result<usize> {
    match size {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            anyhow::anyhow!("--size {s}: this bench takes the detector side in pixels")
        }),
    }
}

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    crate::flow::parse_duration(s).map(Duration::from_secs_f64)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.cmd,
        Cmd::Pilot(_) | Cmd::Kernel(_) | Cmd::Bench(_) | Cmd::Demo { .. }
    ) {
        suit_blas();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("BEAMFLOW_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.cmd, Cmd::Server(_) | Cmd::Pilot(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Pilot logs end up in batch output files: colour codes only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A client command piped into `head` ends quietly when the pipe
    // closes, like other Unix tools; the long-running roles keep ignoring
    // SIGPIPE and handle a closed socket as an error.
    if !matches!(cli.cmd, Cmd::Server(_) | Cmd::Pilot(_) | Cmd::Watch(_)) {
        // SAFETY: restoring a default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn token_cmd(t: TokenCmd, c: &Client, json_out: bool) -> anyhow::Result<()> {
    match t {
        TokenCmd::Add { name, role } => {
            let v: Value = c
                .post("/api/tokens", &json!({ "name": name, "role": role }))
                .await?;
            if json_out {
                print_json(&v);
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!("token `{name}` ({role}): shown once; give it to its holder as BEAMFLOW_TOKEN or --token");
            }
        }
        TokenCmd::List => {
            let l: Vec<crate::server::tokens::TokenInfo> = c.get("/api/tokens").await?;
            if json_out {
                print_json(&l);
            } else {
                let mut tb = table(&["name", "role", "created"]);
                for i in &l {
                    tb.add_row(vec![
                        i.name.clone(),
                        i.role.to_string(),
                        crate::util::fmt_ts(i.created_us),
                    ]);
                }
                println!("{tb}");
            }
        }
        TokenCmd::Revoke { name } => {
            let v: Value = c.delete(&format!("/api/tokens/{name}")).await?;
            if json_out {
                print_json(&v);
            } else {
                println!("token `{name}` revoked");
            }
        }
        TokenCmd::Rotate { grace } => {
            let v: Value = c
                .post(
                    "/api/tokens/rotate",
                    &json!({ "grace_s": grace.as_secs_f64() }),
                )
                .await?;
            if json_out {
                print_json(&v);
            } else {
                println!(
                    "the home token is new; the old one stays good for {}",
                    crate::util::fmt_secs(grace.as_secs_f64())
                );
            }
        }
    }
    Ok(())
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A benchmark's report: one line of JSON with `--json` (for files and
/// scripts), indented otherwise.
fn print_report(v: &serde_json::Value, compact: bool) -> anyhow::Result<()> {
    let text = if compact {
        serde_json::to_string(v)?
    } else {
        serde_json::to_string_pretty(v)?
    };
    println!("{text}");
    Ok(())
}

/// A kernel's report as a two-column table of named figures.
pub(crate) fn figures<K: ToString>(rows: impl IntoIterator<Item = (K, String)>) -> Table {
    let mut t = table(&["figure", "value"]);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    t
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// Re-executes this command with `OPENBLAS_CORETYPE` set when OpenBLAS
/// fell back to kernels far below the CPU (see `beamflow_kernels::blas`):
/// the variable is only read when the library loads. Commands that compute
/// do it; the variable passes on to the pilot's kernel processes, so it
/// happens once per pilot. Setting the variable yourself turns it off.
fn suit_blas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let Some(core) = beamflow_kernels::blas::suited_core() else {
        return;
    };
    let chosen = beamflow_kernels::blas::core();
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OPENBLAS_CORETYPE", core)
        .exec();
    eprintln!(
        "beamflow: OpenBLAS runs its {chosen} kernels on this CPU, which supports {core}; \
         restarting with OPENBLAS_CORETYPE={core} failed ({err}), going on slowly"
    );
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = cli.home.clone().unwrap_or_else(default_home);
    let client = || {
        Client::discover(
            &home,
            cli.url.clone(),
            cli.token.clone(),
            cli.server_cert.clone(),
        )
    };
    match cli.cmd {
        Cmd::Server(a) => {
            let site = match &a.site {
                Some(p) => crate::site::SiteConfig::load(p)?,
                None => crate::site::SiteConfig::local(),
            };
            let running = crate::server::start(crate::server::ServerOptions {
                home: home.clone(),
                bind: a.bind,
                store: a.db.as_deref().map(crate::store::Location::parse),
                runs_dir: a.runs_dir,
                site,
                durability: a.durability,
                pilot_timeout: a.pilot_timeout,
                heartbeat: a.heartbeat,
                advertise_url: a.advertise_url,
                alloc_poll: a.alloc_poll,
                tls: match (a.no_tls, a.tls_cert, a.tls_key) {
                    (true, _, _) => crate::tls::ServerTls::Off,
                    (false, Some(cert), Some(key)) => crate::tls::ServerTls::Files { cert, key },
                    _ => crate::tls::ServerTls::Generated { names: a.tls_names },
                },
            })
            .await?;
            eprintln!(
                "beamflow server listening on {} (home {})",
                running.url,
                home.display()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = running.shutdown.send(());
            running.task.await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pilot(a) => {
            let token_file = match (&cli.token, &a.token_file) {
                (Some(_), _) => None,
                (None, Some(f)) => Some(f.clone()),
                (None, None) => Some(crate::pilot::token_file(&home)),
            };
            let token = match (&cli.token, &token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => crate::pilot::read_token(f)?,
                (None, None) => unreachable!("a token or its file"),
            };
            let c = Client::discover(
                &home,
                cli.url.clone(),
                Some(token.clone()),
                cli.server_cert.clone(),
            )?;
            let gpus = match a.gpus {
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
            let memory_mb = a
                .memory
                .as_deref()
                .map(crate::flow::parse_memory_mb)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
            crate::pilot::run(crate::pilot::PilotOptions {
                url: c.url.clone(),
                trust: c.trust.clone(),
                token,
                token_file,
                name: a.name,
                cpus: a.cpus,
                gpus,
                memory_mb,
                targets: a.targets,
                prefetch: a.prefetch,
                idle_timeout: (!a.idle_timeout.is_zero()).then_some(a.idle_timeout),
                walltime: a.walltime,
                walltime_end: a.walltime_end,
                reservation: a.reservation,
                gpu_env: a.gpu_env,
                drain_margin: a.drain_margin,
                server_lost_timeout: a.server_lost_timeout,
                nodes: crate::pilot::NodeOptions {
                    hosts: a.hosts,
                    span_job: a.span_job,
                    launcher: a.launcher,
                    launcher_flags: a.launcher_flags,
                },
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Flow(f) => flow_cmd(f, &client, cli.json).await,
        Cmd::Run(a) => run_cmd(a, &client, cli.json, &home).await,
        Cmd::Runs(r) => runs_cmd(r, &client()?, cli.json).await,
        Cmd::Report(a) => {
            let since = a.since.as_deref().map(since_us).transpose()?.unwrap_or(0);
            let qs = form_urlencoded::Serializer::new(String::new())
                .append_pair("flow", &a.flow)
                .append_pair("limit", &a.limit.to_string())
                .finish();
            let data: Value = client()?.get(&format!("/api/report?{qs}")).await?;
            let runs = serde_json::from_value(data["runs"].clone())?;
            let attempts = serde_json::from_value(data["attempts"].clone())?;
            let r = crate::flow_report::summarise(&a.flow, runs, attempts, since);
            anyhow::ensure!(
                r.succeeded > 0,
                "flow {}: no succeeded runs to report on{}",
                a.flow,
                a.since.map(|s| format!(" since {s}")).unwrap_or_default()
            );
            let mut plots = Vec::new();
            if !a.no_plots {
                std::fs::create_dir_all(&a.out)?;
                let box_png = a.out.join(format!("{}_runtimes.png", a.flow));
                let conc_png = a.out.join(format!("{}_concurrency.png", a.flow));
                crate::flow_report::boxplots(&r, &box_png)?;
                crate::flow_report::concurrency_plot(&r, &conc_png)?;
                plots = vec![box_png, conc_png];
            }
            if cli.json {
                print_json(&json!({ "report": r, "plots": plots }));
            } else {
                println!(
                    "flow {}: {} runs finished ({} succeeded, {} failed), at most {} at once",
                    r.flow, r.runs, r.succeeded, r.failed, r.max_concurrent
                );
                println!("{}", crate::flow_report::table(&r));
                for p in &plots {
                    println!("plot: {}", p.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Watch(a) => {
            let mut spec = crate::watch::WatchSpec {
                dir: a.dir,
                flow: a.flow,
                pattern: a.pattern,
                recursive: a.recursive,
                batch: a.batch,
                settle: a.settle,
                flush_after: a.flush_after,
                input: a.input_template.map(crate::watch::Input::Json),
                poll: a.poll,
                state: PathBuf::new(),
                max_runs: a.max_runs,
                then: match (a.then, a.when) {
                    (Some(flow), Some(when)) => {
                        let (step, key, threshold) = crate::watch::FollowUp::parse_when(&when)
                            .map_err(|e| anyhow::anyhow!("--when {e}"))?;
                        Some(crate::watch::FollowUp {
                            flow,
                            step,
                            key,
                            threshold,
                            input: crate::watch::Input::Json(
                                a.then_input_template
                                    .unwrap_or_else(|| r#"{"files": {{ files | tojson }}}"#.into()),
                            ),
                        })
                    }
                    _ => None,
                },
            };
            spec.state = a
                .state
                .unwrap_or_else(|| crate::watch::default_state(&home, &spec));
            let say = if cli.json {
                crate::watch::Say::Json
            } else {
                crate::watch::Say::Text
            };
            crate::watch::watch(spec, client()?, say).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Catalog(CatalogCmd::Search {
            text,
            fields,
            limit,
        }) => {
            let mut q: Vec<(String, String)> = vec![("limit".into(), limit.to_string())];
            if let Some(t) = text {
                q.push(("q".into(), t));
            }
            for f in fields {
                q.push(("field".into(), f));
            }
            let qs = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(q)
                .finish();
            let rows: Vec<CatalogRow> = client()?.get(&format!("/api/catalog?{qs}")).await?;
            if cli.json {
                print_json(&rows);
            } else {
                let mut t = table(&["record", "run", "flow", "created", "title", "outputs"]);
                for r in &rows {
                    t.add_row(vec![
                        r.id.to_string(),
                        r.run_id.to_string(),
                        r.flow.clone(),
                        fmt_ts(r.created_us),
                        r.record["title"].as_str().unwrap_or("").to_string(),
                        r.record["outputs"].to_string(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor(a) => {
            use crate::doctor::Level;
            let checks = crate::doctor::run(
                &home,
                cli.url.clone(),
                cli.token.clone(),
                cli.server_cert.clone(),
                &a,
            )
            .await;
            if cli.json {
                print_json(&checks);
            } else {
                let mut t = table(&["", "check", "detail"]);
                for c in &checks {
                    let mark = match c.level {
                        Level::Ok => "ok",
                        Level::Warn => "warn",
                        Level::Fail => "FAIL",
                    };
                    t.add_row(vec![mark.to_string(), c.what.clone(), c.detail.clone()]);
                }
                println!("{t}");
            }
            Ok(if checks.iter().any(|c| c.level == Level::Fail) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Token(t) => {
            token_cmd(t, &client()?, cli.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Admin(AdminCmd::Prune {
            older_than,
            no_archive,
            dry_run,
        }) => {
            let v: Value = client()?
                .post(
                    "/api/admin/prune",
                    &json!({
                        "older_than_s": older_than.as_secs_f64(),
                        "archive": !no_archive,
                        "dry_run": dry_run,
                    }),
                )
                .await?;
            if cli.json {
                print_json(&v);
            } else {
                println!(
                    "{} {} runs ({} attempts, {} events) that finished before {} in {:.1} s{}",
                    if dry_run { "would prune" } else { "pruned" },
                    v["runs"],
                    v["attempts"],
                    v["events"],
                    crate::util::fmt_ts(v["before_us"].as_i64().unwrap_or(0)),
                    v["seconds"].as_f64().unwrap_or(0.0),
                    match v["archive"].as_str() {
                        Some(p) => format!("; archived to {p}"),
                        None => String::new(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ui => {
            let c = client()?;
            // A wrong token or a stopped server is said here, not in the browser.
            let link = c.ui_login_url().await?;
            if cli.json {
                print_json(&json!({ "url": format!("{}/ui/", c.url), "login": link }));
            } else {
                println!(
                    "Open this link in a browser on a machine that can reach {}:",
                    c.url
                );
                println!("{link}");
                println!("(it signs one browser in, once, within two minutes)");
                if let Some(t) = &c.trust {
                    println!(
                        "The browser will not know the server's own certificate ({}): accept it \
                         if its SHA-256 fingerprint is {}",
                        t.path.display(),
                        t.fingerprint()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pilots => {
            let rows: Vec<PilotRow> = client()?.get("/api/pilots").await?;
            if cli.json {
                print_json(&rows);
            } else {
                let mut t = table(&[
                    "id",
                    "name",
                    "host",
                    "state",
                    "resources",
                    "targets",
                    "batch job",
                    "since",
                ]);
                for p in &rows {
                    let info: crate::protocol::PilotInfo =
                        serde_json::from_value(p.info.clone()).context("pilot info")?;
                    t.add_row(vec![
                        p.id.to_string(),
                        p.name.clone(),
                        p.host.clone(),
                        p.state.clone(),
                        info.resources.to_string(),
                        info.targets.join(","),
                        info.batch_job.unwrap_or_default(),
                        fmt_ts(p.connected_us),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::List) => {
            let ks: Vec<Value> = beamflow_kernels::kernels()
                .iter()
                .map(|k| json!({ "name": k.name(), "summary": k.summary(), "params": k.params(), "outputs": k.outputs() }))
                .collect();
            if cli.json {
                print_json(&ks);
            } else {
                let mut t = table(&["kernel", "params", "outputs", "summary"]);
                for k in beamflow_kernels::kernels() {
                    t.add_row(vec![
                        k.name().to_string(),
                        k.params().join(", "),
                        k.outputs().join(", "),
                        k.summary().to_string(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { keep } => {
            crate::demo::run(keep.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::Hedm(h)) => {
            let json_out = cli.json;
            tokio::task::spawn_blocking(move || crate::hedm::run(h, json_out)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::Ptycho(p)) => {
            let json_out = cli.json;
            tokio::task::spawn_blocking(move || crate::ptycho::run(p, json_out)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::Braggnn(b)) => {
            let json_out = cli.json;
            tokio::task::spawn_blocking(move || crate::braggnn::run(b, json_out)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::Step(a)) => {
            tokio::task::spawn_blocking(move || crate::kernel_step::run(a)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kernel(KernelCmd::Xpcs(x)) => {
            let json_out = cli.json;
            tokio::task::spawn_blocking(move || crate::xpcs::run(x, json_out)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Site(c) => {
            crate::alloc::cmd::site_cmd(c, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Alloc(c) => {
            crate::alloc::cmd::alloc_cmd(
                c,
                &client,
                &home,
                cli.url.clone(),
                cli.server_cert.clone(),
                cli.json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "suite" => {
            use clap::ValueEnum;
            let size = match b.size.as_deref() {
                None => crate::bench::suite::Size::Small,
                Some(s) => crate::bench::suite::Size::from_str(s, true).map_err(|_| {
                    anyhow::anyhow!("--size {s}: the suite takes small, medium or large")
                })?,
            };
            let quiet = cli.json && b.out.is_none();
            let out = b.out.clone();
            let r = tokio::task::spawn_blocking(move || {
                crate::bench::suite::run(size, b.warmup, b.repeats, out.as_deref(), quiet)
            })
            .await??;
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "{} · {} threads · {:.1} GB/s triad · {:.0} GFLOP/s SGEMM · git {}",
                    r.machine.cpu_model,
                    r.machine.threads,
                    r.machine.triad_gbs,
                    r.machine.sgemm_gflops,
                    r.machine.git
                );
                println!("{}", crate::bench::suite::table(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "compare" => {
            let [a, bb] = b.files.as_slice() else {
                anyhow::bail!("bench compare takes two result files: A.json B.json");
            };
            let c = crate::bench::compare::compare(
                &crate::bench::compare::load(a)?,
                &crate::bench::compare::load(bb)?,
            );
            if cli.json {
                print_json(&c);
            } else {
                println!("A: {}\nB: {}", c.a, c.b);
                println!("{}", crate::bench::compare::table(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if !b.files.is_empty() => {
            anyhow::bail!("bench {}: unexpected arguments {:?}", b.name, b.files)
        }
        Cmd::Bench(b) if b.name == "xpcs" => {
            let json_out = cli.json;
            let spec = crate::xpcs::BenchXpcs {
                size: pixels(&b.size, 512)?,
                frames: b.frames.unwrap_or(2000),
                twotime_frames: b.twotime_frames,
                data: b.data,
            };
            let out =
                tokio::task::spawn_blocking(move || crate::xpcs::bench(&spec, json_out)).await??;
            print_report(&out, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "hedm" => {
            let spec = crate::hedm::BenchHedm {
                size: pixels(&b.size, 2048)?,
                frames: b.frames.unwrap_or(4),
                peaks: b.peaks,
                polar: b.polar,
                data: b.data,
            };
            let out = tokio::task::spawn_blocking(move || crate::hedm::bench(spec)).await??;
            print_report(&out, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "ptycho" => {
            let spec = crate::ptycho::BenchPtycho {
                dataset: b.dataset,
                iterations: b.iterations,
                engines: b.engines,
                threads: b.threads,
            };
            let out = tokio::task::spawn_blocking(move || crate::ptycho::bench(spec)).await??;
            print_report(&out, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "braggnn" => {
            let spec = crate::braggnn::BenchBraggnn {
                threads: b.threads,
                batches: b.batches,
                patches: b.patches,
                train_patches: b.train_patches,
                epochs: b.epochs,
                frames: b.frames.unwrap_or(4),
            };
            let out = tokio::task::spawn_blocking(move || crate::braggnn::bench(spec)).await??;
            print_report(&out, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "store" => {
            let tasks = b.tasks;
            let db = b.db.as_deref().map(crate::store::Location::parse);
            let out = tokio::task::spawn_blocking(move || {
                crate::bench::store::store(crate::bench::store::StoreBench { tasks, db })
            })
            .await??;
            print_report(&out, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) if b.name == "alloc" => {
            let out = crate::bench::alloc::alloc(crate::bench::alloc::AllocBench {
                site: b.site,
                target: b.target,
                cold: b.cold,
                warm: b.warm,
            })
            .await?;
            print_report(&out, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => {
            let out = crate::bench::engine(crate::bench::EngineBench {
                noop_tasks: b.tasks,
                shell_tasks: b.shell_tasks,
                latency_runs: b.latency_runs,
                pilots: b.pilots,
                prefetch: b.prefetch,
                durability: b.durability,
            })
            .await?;
            if cli.json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                let mut t = table(&["figure", "value"]);
                for k in [
                    "noop_tasks_per_s",
                    "shell_true_tasks_per_s",
                    "overhead_p50_ms",
                    "overhead_p99_ms",
                    "dispatch_latency_p50_ms",
                    "dispatch_latency_p99_ms",
                    "ready_to_started_p50_ms",
                    "ready_to_started_p99_ms",
                ] {
                    let v = out[k]
                        .as_f64()
                        .map(|x| format!("{x:.2}"))
                        .unwrap_or_default();
                    t.add_row(vec![k.to_string(), v]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn flow_cmd(
    f: FlowCmd,
    client: &dyn Fn() -> anyhow::Result<Client>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match f {
        FlowCmd::Validate { files, site } => {
            let site = site
                .as_deref()
                .map(crate::site::SiteConfig::load)
                .transpose()?;
            let mut bad = false;
            for path in &files {
                let src = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                match crate::flow::parse(&src, &path.display().to_string(), site.as_ref()) {
                    Ok(spec) => println!(
                        "{}: ok (flow {} v{}, {} steps)",
                        path.display(),
                        spec.name,
                        spec.version,
                        spec.steps.len()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        bad = true;
                    }
                }
            }
            Ok(if bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        FlowCmd::Register { files } => {
            let c = client()?;
            for path in &files {
                let (name, version, changed) = c.register(path).await?;
                println!(
                    "{}: flow {name} v{version} {}",
                    path.display(),
                    if changed { "registered" } else { "unchanged" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCmd::List => {
            let rows: Vec<FlowRow> = client()?.get("/api/flows").await?;
            if as_json {
                print_json(&rows);
            } else {
                let mut t = table(&["flow", "version", "steps", "registered", "description"]);
                for r in &rows {
                    let steps: Vec<&str> = r.spec.steps.iter().map(|s| s.name.as_str()).collect();
                    t.add_row(vec![
                        r.name.clone(),
                        r.version.to_string(),
                        steps.join(" → "),
                        fmt_ts(r.registered_us),
                        r.spec.description.clone(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCmd::Show { name, version } => {
            let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let row: FlowRow = client()?.get(&format!("/api/flows/{name}{q}")).await?;
            if as_json {
                print_json(&row);
            } else {
                println!("# {} v{} ({})", row.name, row.version, row.path);
                println!("{}", row.source.unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_input(a: &RunArgs) -> anyhow::Result<Value> {
    let mut input = match &a.input {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{}: not valid JSON", p.display()))?
        }
        None => json!({}),
    };
    let sets = crate::flow::parse_set(&a.set).map_err(anyhow::Error::msg)?;
    let obj = input
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("--input must hold a JSON object"))?;
    obj.extend(sets);
    Ok(input)
}

async fn run_cmd(
    a: RunArgs,
    client: &dyn Fn() -> anyhow::Result<Client>,
    as_json: bool,
    home: &Path,
) -> anyhow::Result<ExitCode> {
    let input = run_input(&a)?;
    let is_file = crate::client::is_flow_file(&a.flow);
    if a.local {
        anyhow::ensure!(
            is_file,
            "--local needs a flow file (a .toml path), got `{}`",
            a.flow
        );
        let local = crate::local::Local::start(crate::local::LocalOptions {
            home: None,
            pilots: 1,
            cpus: None,
            prefetch: None,
            durability: Durability::Normal,
            site: crate::site::SiteConfig::local(),
        })
        .await?;
        let res = submit_and_report(&local.client, &a, input, true, as_json, is_file).await;
        local.stop().await?;
        return res;
    }
    let _ = home;
    submit_and_report(&client()?, &a, input, a.wait, as_json, is_file).await
}

async fn submit_and_report(
    c: &Client,
    a: &RunArgs,
    input: Value,
    wait: bool,
    as_json: bool,
    is_file: bool,
) -> anyhow::Result<ExitCode> {
    let name = if is_file {
        let (name, version, changed) = c.register(Path::new(&a.flow)).await?;
        if changed && !as_json {
            eprintln!("registered flow {name} v{version}");
        }
        name
    } else {
        a.flow.clone()
    };
    let ids = c.submit(&name, a.version, vec![input]).await?;
    let id = ids[0];
    if !wait {
        if as_json {
            print_json(&json!({ "run": id }));
        } else {
            println!("run {id} queued (beamflow runs wait {id})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let runs = c.wait(&ids, !as_json, None).await?;
    show_run(c, id, as_json).await?;
    Ok(if runs.iter().all(|r| r.state == "succeeded") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn show_run(c: &Client, id: u64, as_json: bool) -> anyhow::Result<()> {
    let d: RunDetail = c.get(&format!("/api/runs/{id}")).await?;
    let t = crate::report::timing(&d);
    if as_json {
        print_json(
            &json!({ "run": d.run, "attempts": d.attempts, "events": d.events, "timing": t }),
        );
        return Ok(());
    }
    let r = &d.run;
    println!(
        "run {} · flow {} v{} · {}",
        r.id, r.flow, r.flow_version, r.state
    );
    println!("created {} · dir {}", fmt_ts(r.created_us), r.dir);
    println!("input {}", r.input);
    if let Some(e) = &r.error {
        println!("error: {e}");
    }
    println!("{}", crate::report::table(&t));
    let failed: Vec<_> = d.attempts.iter().filter(|a| a.error.is_some()).collect();
    if !failed.is_empty() {
        println!("attempts with errors:");
        for a in failed {
            println!(
                "  {} #{} (attempt {}): {} — {}",
                a.step,
                a.number,
                a.id,
                a.state,
                a.error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

async fn runs_cmd(r: RunsCmd, c: &Client, as_json: bool) -> anyhow::Result<ExitCode> {
    match r {
        RunsCmd::List { state, flow, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            if let Some(s) = &state {
                q.append_pair("state", s);
            }
            if let Some(f) = &flow {
                q.append_pair("flow", f);
            }
            let rows: Vec<RunRow> = c.get(&format!("/api/runs?{}", q.finish())).await?;
            if as_json {
                print_json(&rows);
            } else {
                let mut t = table(&["run", "flow", "state", "created", "duration", "error"]);
                for r in &rows {
                    let dur = match (r.finished_us, r.created_us) {
                        (Some(f), c) => fmt_secs((f - c) as f64 / 1e6),
                        _ => "-".into(),
                    };
                    t.add_row(vec![
                        r.id.to_string(),
                        format!("{} v{}", r.flow, r.flow_version),
                        r.state.clone(),
                        fmt_ts(r.created_us),
                        dur,
                        r.error.clone().unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Show { id } => {
            show_run(c, id, as_json).await?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Cancel { id } => {
            let v: Value = c
                .post(&format!("/api/runs/{id}/cancel"), &json!({}))
                .await?;
            println!("{}", v["message"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Retry { id } => {
            let v: Value = c.post(&format!("/api/runs/{id}/retry"), &json!({})).await?;
            println!("{}", v["message"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Wait { ids, timeout } => {
            anyhow::ensure!(!ids.is_empty(), "name at least one run");
            let runs = c.wait(&ids, !as_json, timeout).await?;
            if as_json {
                print_json(&runs);
            } else {
                for r in &runs {
                    println!(
                        "run {} {}{}",
                        r.id,
                        r.state,
                        r.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(if runs.iter().all(|r| r.state == "succeeded") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
