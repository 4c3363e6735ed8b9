//! beamflow: runs flows (transfer → compute → publish) from instruments on
//! pilot jobs at HPC facilities.
//!
//! The modules form layers; each uses only those listed before it.
//! - Foundations: [`util`] (clock, formats), [`units`] (durations, memory),
//!   [`tomlfile`] (typed TOML with errors naming line and key),
//!   [`host`] (this machine), [`home`] (the state directory, `server.json`,
//!   token files), [`resources`] (requests and capacity), [`ranks`] (MPI).
//! - Definitions: [`site`] (site configs), [`flow`] (flow files),
//!   [`protocol`] (pilot ↔ server frames), [`batch`] (PBS and Slurm),
//!   [`alloc`] (allocation queues), [`api`] (client ↔ server messages).
//! - State and work: [`store`] (SQLite or PostgreSQL), [`tls`], [`actions`]
//!   and [`pilot`] (what runs tasks), [`report`] (timing tables' numbers,
//!   report figures), [`watch`] (file triggers, submitting through
//!   [`watch::Submit`]), [`wsclient`] (the client end of the server's WebSockets).
//! - [`agent`]: a facility's login-node process that runs its scheduler
//!   commands for a server elsewhere ([`agent::wire`] is its protocol).
//! - [`server`]: the scheduler core, the HTTP API and the web page.
//! - [`cli`]: the command line, the HTTP client and every line printed.
//!   Nothing else imports it.

pub mod home;
pub mod host;
pub mod ranks;
pub mod resources;
pub mod tomlfile;
pub mod units;
pub mod util;

pub mod alloc;
pub mod api;
pub mod batch;
pub mod flow;
pub mod protocol;
pub mod site;

pub mod actions;
pub mod pilot;
pub mod report;
pub mod store;
pub mod tls;
pub mod watch;
pub mod wsclient;

pub mod agent;

pub mod server;

pub mod cli;
