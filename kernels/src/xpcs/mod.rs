//! X-ray photon correlation spectroscopy: multi-tau g2 from a stream of
//! detector frames, binned in q with the symmetric normalisation of the APS
//! "XPCS Boost" reference, so results agree with it bin for bin.

pub mod delays;
pub mod fit;
pub mod imm;
pub mod io;
mod lanes;
pub mod multitau;
pub mod params;
pub mod pipeline;
pub mod plot;
pub mod qbin;
pub mod results;
pub mod scattering;
pub mod steps;
#[cfg(feature = "torch")]
pub mod torch;
pub mod twotime;

pub use delays::{delay_grid, Delay};
pub use multitau::{Multitau, PixelSums};
pub use qbin::{G2Result, QMap};
