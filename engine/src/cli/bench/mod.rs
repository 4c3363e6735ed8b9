//! `beamflow bench`: what this machine does with beamflow's kernels.
//!
//! The suite (`beamflow bench [--size small|medium|large]`, or `bench
//! suite`) measures the machine first — memory bandwidth, floating-point
//! peak, cores, GPUs, libtorch devices ([`machine`]) — then runs every
//! kernel at a standard size on each backend it has here, with warm-up and
//! repeats ([`suite`], [`cases`]), and places each under the machine's
//! roofline ([`roofline`]). Results are a table, JSON with a stable schema
//! and a roofline PNG; [`compare`] sets two such files side by side.
//!
//! The single benches with their reference comparisons: [`engine`] (the
//! engine's own cost), [`alloc`] (waiting for a pilot the batch scheduler
//! starts), [`sites`] (placing a step at another site), [`transfer`] (rsync
//! stage-in against plain rsync), [`store`] (the database at a million tasks), and [`xpcs`],
//! [`hedm`], [`ptycho`], [`braggnn`].

pub mod alloc;
pub mod braggnn;
pub mod cases;
pub mod compare;
pub mod engine;
pub mod hedm;
pub mod machine;
pub mod ptycho;
pub mod roofline;
pub mod sites;
pub mod store;
pub mod suite;
pub mod transfer;
pub mod xpcs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::render::table;
use super::Ctx;
use crate::store::Durability;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCmd>,
    /// Without a subcommand: the suite.
    #[command(flatten)]
    suite: SuiteArgs,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The machine's roofs, then every kernel at a standard size on each
    /// backend here, placed under the roofline (the default).
    Suite(SuiteArgs),
    /// Two suite results side by side as ratios, B ÷ A.
    Compare {
        /// The first `beamflow bench --json` result.
        a: PathBuf,
        /// The second.
        b: PathBuf,
    },
    /// The engine itself: tasks/s, dispatch latency, overhead per step.
    Engine(EngineArgs),
    /// XPCS: multi-tau kernel, end to end and two-time on a synthetic series.
    Xpcs(xpcs::BenchXpcs),
    /// HEDM: peak search and fit, against the synthetic truth.
    Hedm(hedm::BenchHedm),
    /// Ptychography: each engine's time per iteration and error.
    Ptycho(ptycho::BenchPtycho),
    /// BraggNN: inference and training throughput in libtorch, ONNX
    /// Runtime and PyTorch; frames end to end.
    Braggnn(braggnn::BenchBraggnn),
    /// The store: writes, reads and pruning at `--tasks` attempts.
    Store(store::StoreBench),
    /// How long a task waits for a pilot submitted through the site's
    /// batch scheduler, cold and warm.
    Alloc(alloc::AllocBench),
    /// Ready → started on warm pilots when the step is placed at another
    /// site, against a single site.
    Sites(sites::SitesBench),
    /// Stage-in throughput of the rsync transfer backend against plain
    /// rsync, over SSH on loopback.
    Transfer(transfer::TransferBench),
}

#[derive(Args)]
pub struct SuiteArgs {
    /// small, medium or large.
    #[arg(long, value_enum, default_value = "small")]
    size: suite::Size,
    /// Where bench.json and roofline.png go.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Untimed runs of each case before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs of each case.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

#[derive(Args)]
pub struct EngineArgs {
    /// `noop` kernel tasks in the throughput burst.
    #[arg(long, default_value_t = 20000)]
    tasks: usize,
    /// `shell true` tasks in the throughput burst.
    #[arg(long, default_value_t = 3000)]
    shell_tasks: usize,
    /// Sequential 4-step runs for the latency figures.
    #[arg(long, default_value_t = 200)]
    latency_runs: usize,
    /// Pilots in the process.
    #[arg(long, default_value_t = 1)]
    pilots: usize,
    /// Tasks each pilot accepts beyond its free resources.
    #[arg(long)]
    prefetch: Option<u32>,
    #[arg(long, value_enum, default_value = "normal")]
    durability: Durability,
}

impl BenchArgs {
    pub async fn run(self, cx: &Ctx) -> anyhow::Result<ExitCode> {
        let out = cx.out;
        match self.cmd.unwrap_or(BenchCmd::Suite(self.suite)) {
            BenchCmd::Suite(a) => a.run(cx).await?,
            BenchCmd::Compare { a, b } => {
                let c = compare::compare(&compare::load(&a)?, &compare::load(&b)?);
                out.show(&c, |c| {
                    format!("A: {}\nB: {}\n{}", c.a, c.b, compare::table(c))
                });
            }
            BenchCmd::Engine(a) => a.run(cx).await?,
            BenchCmd::Xpcs(b) => {
                let quiet = out.quiet();
                out.report(&tokio::task::spawn_blocking(move || b.run(quiet)).await??)
            }
            BenchCmd::Hedm(b) => out.report(&tokio::task::spawn_blocking(move || b.run()).await??),
            BenchCmd::Ptycho(b) => {
                out.report(&tokio::task::spawn_blocking(move || b.run()).await??)
            }
            BenchCmd::Braggnn(b) => {
                out.report(&tokio::task::spawn_blocking(move || b.run()).await??)
            }
            BenchCmd::Store(b) => out.report(&tokio::task::spawn_blocking(move || b.run()).await??),
            BenchCmd::Alloc(b) => out.report(&b.run().await?),
            BenchCmd::Sites(b) => out.report(&b.run().await?),
            BenchCmd::Transfer(b) => out.report(&b.run().await?),
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl SuiteArgs {
    async fn run(self, cx: &Ctx) -> anyhow::Result<()> {
        // With --json and no -o the document is all there is to see.
        let quiet = cx.out.quiet() && self.out.is_none();
        let r = tokio::task::spawn_blocking(move || {
            suite::run(
                self.size,
                self.warmup,
                self.repeats,
                self.out.as_deref(),
                quiet,
            )
        })
        .await??;
        cx.out.show(&r, |r| {
            format!(
                "{} · {} threads · {:.1} GB/s triad · {:.0} GFLOP/s SGEMM · git {}\n{}",
                r.machine.cpu_model,
                r.machine.threads,
                r.machine.triad_gbs,
                r.machine.sgemm_gflops,
                r.machine.git,
                suite::table(r)
            )
        });
        Ok(())
    }
}

impl EngineArgs {
    async fn run(self, cx: &Ctx) -> anyhow::Result<()> {
        let out = engine::engine(engine::EngineBench {
            noop_tasks: self.tasks,
            shell_tasks: self.shell_tasks,
            latency_runs: self.latency_runs,
            pilots: self.pilots,
            prefetch: self.prefetch,
            durability: self.durability,
        })
        .await?;
        cx.out.record(&out, {
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
                    .unwrap_or_else(|| "—".into());
                t.add_row(vec![k.to_string(), v]);
            }
            t
        });
        Ok(())
    }
}
