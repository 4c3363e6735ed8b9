//! Native scientific kernels for beamflow.
//!
//! Every kernel is a plain library function with typed parameters and a typed
//! result. The engine reaches them through one door, the [`registry`]: a flow step
//! with `action = "kernel"` names a kernel, the engine validates the name and the
//! declared outputs when the flow is registered, and a pilot calls
//! [`Kernel::run`] on a blocking thread when the step executes.
//!
//! Kernels receive JSON parameters (already templated by the engine) and return a
//! JSON object of outputs, so that later steps can reference
//! `steps.NAME.outputs.KEY` without the engine knowing the kernel's types.

// The system OpenBLAS (libopenblas-dev) provides the cblas routines the
// two-time correlation calls.
#[link(name = "openblas")]
unsafe extern "C" {}

pub mod backend;
pub mod blas;
#[cfg(feature = "torch")]
pub mod braggnn;
pub mod builtin;
pub mod figure;
pub mod gpu;
pub mod h5check;
pub mod hedm;
pub mod inherit;
pub mod machine;
pub mod output;
pub mod params;
pub mod ptycho;
pub mod ranks;
pub mod registry;
pub mod synthetic;
pub mod xpcs;

pub use registry::{find, kernels, Kernel, KernelContext, KernelError};
