//! One way to run a peak model, whichever runtime holds it: weights
//! (`.safetensors`, `.npz`) run in libtorch, `.onnx` files in ONNX Runtime.
//! Both take normalised patches and give (x, y)/psz.

use std::path::Path;

use tch::nn::VarStore;
use tch::Device;

use super::data::{crops, errors_px};
use super::model::BraggNN;
use super::onnx::OnnxNet;
use super::weights;
use crate::synthetic::braggnn::PatchSet;

enum Runtime {
    Torch {
        _vs: VarStore,
        net: Box<BraggNN>,
        device: Device,
    },
    Onnx(OnnxNet),
}

/// On a CPU a batch runs this many patches at a time: the attention
/// matrices of 64 patches (64·81² floats at psz 11, 1.7 MB) stay in the
/// caches, those of 512 do not — one core, before this: libtorch 20,700
/// patches/s at 64 against 7,400 at 512, ONNX Runtime 33,900 against
/// 25,000. GPUs take the batch whole.
pub const CPU_PIECE: usize = 64;

/// A peak model ready to predict.
pub struct Predictor {
    rt: Runtime,
    /// The most patches one call runs (`CPU_PIECE` on a CPU).
    piece: Option<usize>,
    /// The patch side the model takes.
    pub psz: usize,
    /// Where it runs: `torch:cpu`, `torch:cuda:0`, `ort:cpu`, `ort:cuda:0`.
    pub device: String,
    /// Why the device is not the one asked for.
    pub device_note: Option<String>,
}

impl Predictor {
    /// Opens the model at `path` on `device` (`cpu`, `cuda`, `cuda:N` or
    /// `auto`) with `threads` threads for the runtime (0: its default).
    pub fn open(path: &Path, device: &str, threads: usize) -> Result<Predictor, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => {
                let net = OnnxNet::open(path, device, threads)?;
                // A model fixed to a batch size runs that size.
                let on_cpu = net.device == "ort:cpu" && net.fixed_batch().is_none();
                Ok(Predictor {
                    piece: on_cpu.then_some(CPU_PIECE),
                    psz: net.psz(),
                    device: net.device.clone(),
                    device_note: net.device_note.clone(),
                    rt: Runtime::Onnx(net),
                })
            }
            Some("safetensors" | "npz") => {
                let shape = weights::shape_of(path)?;
                let (dev, note) = crate::backend::device(device)?;
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let mut vs = VarStore::new(dev);
                let net = BraggNN::new(&vs.root(), shape)?;
                weights::load(&mut vs, path)?;
                Ok(Predictor {
                    piece: (dev == Device::Cpu).then_some(CPU_PIECE),
                    psz: net.shape.psz as usize,
                    device: crate::backend::device_name(dev),
                    device_note: note,
                    rt: Runtime::Torch {
                        _vs: vs,
                        net: Box::new(net),
                        device: dev,
                    },
                })
            }
            _ => Err(format!(
                "{}: a peak model is an .onnx file or BraggNN weights (.safetensors, .npz)",
                path.display()
            )),
        }
    }

    /// `n` normalised patches (row-major, `psz²` each) → `n` (x, y)/psz,
    /// run `batch` patches at a time (at most [`CPU_PIECE`] on a CPU).
    pub fn predict(&mut self, x: &[f32], n: usize, batch: usize) -> Result<Vec<[f32; 2]>, String> {
        let per = self.psz * self.psz;
        if x.len() != n * per {
            return Err(format!(
                "{} values for {n} patches of {}²",
                x.len(),
                self.psz
            ));
        }
        let batch = batch.max(1).min(self.piece.unwrap_or(usize::MAX));
        let mut out = Vec::with_capacity(n);
        for chunk in x.chunks(batch * per) {
            let m = chunk.len() / per;
            match &mut self.rt {
                Runtime::Onnx(net) => out.extend(net.predict(chunk, m)?),
                Runtime::Torch { net, device, .. } => out.extend(net.predict(chunk, *device)?),
            }
        }
        Ok(out)
    }
}

impl Predictor {
    /// The centre error, px, on each patch of `set` (unshifted windows,
    /// labels from the file), `batch` patches per call.
    pub fn errors(&mut self, set: &PatchSet, batch: usize) -> Result<Vec<f64>, String> {
        if set.psz != self.psz {
            return Err(format!(
                "the patches are {}² but the model takes {}²",
                set.psz, self.psz
            ));
        }
        let (x, y) = crops(set, 0..set.len());
        let p = self.predict(&x, set.len(), batch)?;
        Ok(errors_px(&p, &y, self.psz))
    }
}
