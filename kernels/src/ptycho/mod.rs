//! Far-field ptychographic phase retrieval: ePIE/rPIE (sequential), the
//! difference map and LSQ-ML (parallel over positions), object and probe retrieval
//! with incoherent probe modes and scan-position correction, on pty-chi's
//! data model and conventions.

pub mod config;
pub mod dm;
pub mod fft;
pub mod io;
pub mod lsqml;
pub mod metrics;
pub mod model;
pub mod pie;
pub mod plot;
pub mod position;
pub mod recon;
pub mod steps;
#[cfg(feature = "torch")]
pub mod torch;

pub use model::{Data, Field, Probe};
pub use recon::{reconstruct, Engine, History, Options, Outcome, Truth};
pub use rustfft::num_complex::Complex32;
