//! The `beamflow` command line: the only part of the crate that prints, and
//! the only user of the HTTP [`client`]. Each command family has a module
//! of its own with its arguments and what it does; [`render`] decides how
//! results are shown (table, `--json`, `--quiet`).

pub mod admin;
pub mod agent;
pub mod alloc;
pub mod bench;
pub mod catalog;
pub mod client;
pub mod demo;
pub mod doctor;
pub mod flow;
pub mod kernel;
pub mod local;
pub mod pilot;
pub mod pilots;
pub mod render;
pub mod report;
pub mod runs;
pub mod server;
pub mod site;
pub mod token;
pub mod ui;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use self::client::Client;
use self::render::Out;

#[derive(Parser)]
#[command(
    name = "beamflow",
    version,
    about = "Flows from instruments to supercomputers, on pilot jobs",
    after_help = "Exit status: 0 it worked; 1 it worked and the answer is no (a run that did not \
                  succeed, a failed doctor check); 2 it could not do what was asked (an invalid \
                  flow or site file, a bad argument, no server, a refused request)."
)]
pub struct Cli {
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
    /// Print nothing but errors: the exit status says how it went. (No
    /// short form: `-q` is the XPCS commands' qmap, as in the reference CLI.)
    #[arg(long, global = true, conflicts_with = "json")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: HTTP API, pilot connections, durable store.
    Server(server::ServerArgs),
    /// Run a pilot that executes tasks pushed by the server.
    Pilot(pilot::PilotArgs),
    /// Register, list, show and validate flows.
    #[command(subcommand)]
    Flow(flow::FlowCmd),
    /// Start a run of a flow (a registered name or a .toml file).
    Run(runs::RunArgs),
    /// List, show, cancel, retry and wait for runs.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// Start a flow for each new file (or batch of files) in a directory,
    /// once the file is complete; each file once, across restarts.
    Watch(watch::WatchArgs),
    /// Where a flow's runs spent their time: per-step medians and
    /// quartiles, runtime box plots and runs in flight over time (PNG).
    Report(report::ReportArgs),
    /// Search the catalog of published records.
    #[command(subcommand)]
    Catalog(catalog::CatalogCmd),
    /// List pilots the server knows.
    Pilots,
    /// Print the link that opens the web page (runs, timelines, catalog,
    /// reports, pilots) signed in with this server's token.
    Ui,
    /// Check this machine, the server, the token and a site config, and say
    /// precisely what is wrong (exit 1 when a check fails).
    Doctor(doctor::DoctorArgs),
    /// Tokens for people and services (viewer, submitter), and rotating
    /// the home token without restarting anything.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Keeping the server's store in bounds (admin token).
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// The native kernels: list them, or run one on files outside any flow.
    #[command(subcommand)]
    Kernel(kernel::KernelCmd),
    /// Server and pilot in one process, a generated dataset, a real flow end to end.
    Demo(demo::DemoArgs),
    /// Benchmarks: the machine and every kernel (the default), or one
    /// kernel, the engine, the store or the batch scheduler.
    Bench(bench::BenchArgs),
    /// Check and show site configs (site-configs/NAME.toml).
    #[command(subcommand)]
    Site(site::SiteCmd),
    /// Allocation queues: pilot jobs submitted to PBS or Slurm on demand.
    #[command(subcommand)]
    Alloc(alloc::AllocCmd),
    /// Run a facility's scheduler for a server elsewhere: on the login
    /// node, connect out to the server and submit, poll and cancel its
    /// pilot jobs there (and relay pilots' connections where needed).
    Agent(agent::AgentArgs),
    /// Sites the server submits to: its own and those agents run, with
    /// their queues, jobs and pilots.
    Sites,
}

/// What every command is given: where the server and its home are, and
/// how to print.
pub struct Ctx {
    pub home: PathBuf,
    pub url: Option<String>,
    pub token: Option<String>,
    pub server_cert: Option<PathBuf>,
    pub out: Out,
}

impl Ctx {
    /// A client of the server this home (or `--url`) names.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::discover(
            &self.home,
            self.url.clone(),
            self.token.clone(),
            self.server_cert.clone(),
        )
    }
}

/// Durations on the command line: `90s`, `5m`, `1h 30m`, or seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s).map(Duration::from_secs_f64)
}

/// The exit status of a command that worked and says yes or no (see
/// [`main`]).
fn done(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The command line as parsed and as `--help` shows it: the flags that
/// reach a server (`--url`, `--token`, `--server-cert`) are global, but the
/// commands that never talk to one (the kernels, benchmarks, the demo, site
/// configs, the server itself) do not list them.
fn command() -> clap::Command {
    use clap::CommandFactory;
    const OFFLINE: [&str; 5] = ["kernel", "bench", "demo", "site", "server"];
    const CLIENT_FLAGS: [&str; 3] = ["url", "token", "server_cert"];
    let c = Cli::command();
    // A global flag is not copied into a subcommand that has one of the
    // same id, so a hidden copy there (itself global) hides it all the way
    // down. (Changing the arguments after the command is built would
    // corrupt clap's index of them.)
    let hidden: Vec<clap::Arg> = c
        .get_arguments()
        .filter(|a| CLIENT_FLAGS.contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    OFFLINE.iter().fold(c, |c, name| {
        c.mut_subcommand(name, |s| s.args(hidden.iter().cloned()))
    })
}

/// Exit status, one rule for every command: 0 it worked; 1 it worked and
/// the answer is no (a run that did not succeed, a failed doctor check);
/// 2 it could not do what was asked (an invalid flow or site file, a bad
/// argument, no server, a refused request).
pub fn main() -> ExitCode {
    let cli = {
        use clap::FromArgMatches;
        let mut m = command().get_matches();
        Cli::from_arg_matches_mut(&mut m).unwrap_or_else(|e| e.exit())
    };
    if matches!(
        cli.cmd,
        Cmd::Pilot(_) | Cmd::Kernel(_) | Cmd::Bench(_) | Cmd::Demo(_)
    ) {
        suit_blas();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("BEAMFLOW_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.cmd, Cmd::Server(_) | Cmd::Pilot(_) | Cmd::Agent(_)) {
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
    if !matches!(
        cli.cmd,
        Cmd::Server(_) | Cmd::Pilot(_) | Cmd::Watch(_) | Cmd::Agent(_)
    ) {
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

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let cx = Ctx {
        home: cli.home.unwrap_or_else(crate::home::default_home),
        url: cli.url,
        token: cli.token,
        server_cert: cli.server_cert,
        out: Out::new(cli.json, cli.quiet),
    };
    match cli.cmd {
        Cmd::Server(a) => a.run(&cx).await,
        Cmd::Pilot(a) => a.run(&cx).await,
        Cmd::Flow(c) => c.run(&cx).await,
        Cmd::Run(a) => a.run(&cx).await,
        Cmd::Runs(c) => c.run(&cx).await,
        Cmd::Watch(a) => a.run(&cx).await,
        Cmd::Report(a) => a.run(&cx).await,
        Cmd::Catalog(c) => c.run(&cx).await,
        Cmd::Pilots => pilots::list(&cx).await,
        Cmd::Ui => ui::link(&cx).await,
        Cmd::Doctor(a) => a.run(&cx).await,
        Cmd::Token(c) => c.run(&cx).await,
        Cmd::Admin(c) => c.run(&cx).await,
        Cmd::Kernel(c) => c.run(&cx).await,
        Cmd::Demo(a) => a.run(&cx).await,
        Cmd::Bench(a) => a.run(&cx).await,
        Cmd::Site(c) => c.run(&cx),
        Cmd::Alloc(c) => c.run(&cx).await,
        Cmd::Agent(a) => a.run(&cx).await,
        Cmd::Sites => agent::list(&cx).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        command().debug_assert();
    }

    /// The kernels' help does not offer the flags that reach a server;
    /// client commands' help does, and both still accept them.
    #[test]
    fn offline_commands_do_not_list_the_server_flags() {
        let help = |args: &[&str]| {
            let e = command().try_get_matches_from(args).err().unwrap();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            e.to_string()
        };
        let h = help(&["beamflow", "kernel", "xpcs", "multitau", "--help"]);
        assert!(h.contains("--raw") && h.contains("--home"), "{h}");
        assert!(!h.contains("--url") && !h.contains("--token"), "{h}");
        let h = help(&["beamflow", "runs", "list", "--help"]);
        assert!(h.contains("--url") && h.contains("--token"), "{h}");
        use clap::FromArgMatches;
        for args in [
            &["beamflow", "--url", "https://x:1", "kernel", "list"][..],
            &["beamflow", "kernel", "list", "--url", "https://x:1"][..],
        ] {
            let m = command().try_get_matches_from(args).unwrap();
            let cli = Cli::from_arg_matches(&m).unwrap();
            assert_eq!(cli.url.as_deref(), Some("https://x:1"));
        }
    }

    /// Every `beamflow …` command in a code block of the README and the
    /// docs parses as written: the docs stay true to the command line.
    /// (Usage lines with `[optional]` parts, `A|B` choices or `…` are
    /// synopses, not commands, and are left out.)
    #[test]
    fn the_commands_in_the_docs_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        let mut parsed = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for (line, cmd) in commands(&text) {
                let words = shlex::split(&cmd)
                    .unwrap_or_else(|| panic!("{}:{line}: cannot split `{cmd}`", file.display()));
                match Cli::try_parse_from(&words) {
                    Ok(_) => {}
                    Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                    Err(e) => panic!("{}:{line}: `{cmd}`:\n{e}", file.display()),
                }
                parsed += 1;
            }
        }
        assert!(parsed >= 40, "only {parsed} commands found in the docs");
    }

    /// `(line, command)` for each `beamflow …` command in the code blocks
    /// of `md`: continuation lines joined, comments and a trailing `&` cut.
    fn commands(md: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut in_code = false;
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in md.lines().enumerate() {
            if raw.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            let l = raw.trim();
            let l = l.strip_prefix("$ ").unwrap_or(l);
            let (start, mut text) = match pending.take() {
                Some((n, t)) => (n, t + " " + l),
                None if l.starts_with("beamflow ") || l == "beamflow" => (i + 1, l.to_string()),
                None => continue,
            };
            if let Some(cut) = text.find(" # ").or_else(|| text.find("  #")) {
                text.truncate(cut);
            }
            let text = text.trim_end();
            if let Some(more) = text.strip_suffix('\\') {
                pending = Some((start, more.trim_end().to_string()));
                continue;
            }
            let text = text.trim_end_matches('&').trim_end();
            let synopsis = ['[', '|', '…', '<'].iter().any(|c| text.contains(*c))
                || text.contains("...")
                || text.contains("$(");
            if !synopsis {
                out.push((start, text.to_string()));
            }
        }
        out
    }
}
