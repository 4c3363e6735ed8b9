//! Synthetic data with known truth, for tests, the demo and benchmarks.

pub mod braggnn;
pub mod hedm;
pub mod ptycho;
pub mod xpcs;
