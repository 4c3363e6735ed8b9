//! Flows: versioned DAGs of steps, parsed from TOML files in `jobs/`.
//!
//! [`parse`] turns a file into a validated [`FlowSpec`] or a list of errors that
//! each name the file, line and key. Nothing invalid ever reaches the store, so
//! the server only ever schedules flows whose steps, edges and templates are
//! known to be consistent.

mod check;
mod input;
mod parse;
mod spec;
mod step;
pub mod template;

pub use input::{coerce_inputs, parse_set};
pub use parse::{parse, FlowError, FlowErrors};
pub use spec::*;
