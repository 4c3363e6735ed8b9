//! BraggNN as ONNX: export of a trained network ([`export`]) and inference
//! through ONNX Runtime ([`OnnxNet`], the `ort` crate with the library
//! loaded at run time from `ORT_DYLIB_PATH`).
//!
//! # The model contract
//!
//! Any ONNX model — beamflow's export or one trained elsewhere — runs as a
//! peak model when it has
//! - exactly one input, float32, shape `[N, 1, P, P]` (`N` symbolic or a
//!   fixed batch, `P` the odd patch side): patches cropped around a peak's
//!   brightest pixel (at the centre, index `P/2`), each min–max normalised
//!   to [0, 1];
//! - exactly one output, float32, shape `[N, 2]`: the peak centre as
//!   `(column, row) / P` in the patch's pixel coordinates (pixel centres at
//!   integers), so `P·output + corner` is the position in the frame.
//!
//! A model with a fixed batch gets its last batch padded with empty
//! patches. Names of the input and output are free; beamflow's export
//! calls them `patches` and `centres` and records `psz` and `fcsz` in the
//! model's metadata.

pub mod export;
pub mod proto;
mod run;

pub use export::{export, export_weights};
pub use run::OnnxNet;

/// Input name of exported models.
pub const INPUT: &str = "patches";
/// Output name of exported models.
pub const OUTPUT: &str = "centres";
