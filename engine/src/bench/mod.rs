//! `beamflow bench`: what this machine does with beamflow's kernels.
//!
//! The suite (`beamflow bench [--size small|medium|large]`) measures the
//! machine first — memory bandwidth, floating-point peak, cores, GPUs,
//! libtorch devices ([`machine`]) — then runs every kernel at a standard size
//! on each backend it has here, with warm-up and repeats ([`suite`],
//! [`cases`]), and places each under the machine's roofline ([`roofline`]).
//! Results are a table, JSON with a stable schema and a roofline PNG;
//! [`compare`] sets two such files side by side.
//!
//! The single-kernel benches with their reference comparisons stay as they
//! are: [`engine`] (`beamflow bench engine`), [`alloc`] (`bench alloc`),
//! [`store`] (`bench store`: the database at a million tasks), and
//! `bench xpcs|hedm|ptycho|braggnn` in the kernels' own modules.

pub mod alloc;
pub mod cases;
pub mod compare;
pub mod engine;
pub mod machine;
pub mod roofline;
pub mod store;
pub mod suite;

pub use engine::{engine, EngineBench};
