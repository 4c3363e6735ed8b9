//! BraggNN: a small convolutional network with a non-local (attention)
//! block that locates a Bragg peak in an 11×11 (or 15×15) patch to a
//! fraction of a pixel, at thousands of patches per second per core —
//! the fast alternative to a pseudo-Voigt fit for HEDM peak positions.
//!
//! Training ([`train`]) and the network ([`model`]) are libtorch's;
//! trained weights export to ONNX ([`onnx`]) and any peak model — these
//! weights, their ONNX graph, or an ONNX model made elsewhere — locates
//! peaks on raw frames ([`infer`], [`net`]).

pub mod baseline;
pub mod data;
pub mod infer;
pub mod io;
pub mod model;
pub mod net;
pub mod onnx;
pub mod params;
pub mod patches;
pub mod plot;
pub mod prepare;
pub mod steps;
pub mod train;
pub mod weights;

pub use model::{BraggNN, Shape};
pub use net::Predictor;
pub use train::{train, Epoch, TrainOptions, Trained};
