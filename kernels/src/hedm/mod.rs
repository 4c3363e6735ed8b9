//! HEDM Bragg-peak finding and fitting, following MIDAS's peak search:
//! per-frame correction and threshold, 8-connected regions, one peak per
//! regional maximum, and a joint fit of each region's peaks with MIDAS's
//! pseudo-Voigt model — here by a bounded Levenberg–Marquardt with the
//! analytic Jacobian instead of MIDAS's Nelder–Mead (same minimum, about
//! 80× fewer model evaluations).

pub mod config;
pub mod fit;
pub mod init;
pub mod io;
pub mod lm;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod regions;
pub mod steps;

pub use fit::{fit_region, fit_regions, FitOptions, Peak, COLUMNS};
pub use init::Geometry;
pub use lm::{LmOptions, Rc, Workspace};
pub use regions::{correct, find, Corrections, FindOptions, FindStats, Region, Ring, Threshold};
