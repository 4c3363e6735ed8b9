//! beamflow: runs flows (transfer → compute → publish) from instruments on
//! pilot jobs at HPC facilities.
//!
//! Crate map: [`flow`] parses and validates flow files; [`store`] keeps durable
//! state; [`server`] schedules and serves the API; [`pilot`] executes
//! [`actions`] on compute nodes; [`client`] and [`cli`] are the user's side.

pub mod actions;
pub mod alloc;
pub mod batch;
pub mod bench;
pub mod braggnn;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod demo;
pub mod doctor;
pub mod flow;
pub mod flow_report;
pub mod hedm;
pub mod kernel_step;
pub mod local;
pub mod pilot;
pub mod protocol;
pub mod ptycho;
pub mod ranks;
pub mod report;
pub mod server;
pub mod site;
pub mod store;
pub mod tls;
pub mod util;
pub mod watch;
pub mod xpcs;
