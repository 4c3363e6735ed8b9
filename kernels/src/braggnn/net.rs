//! One way to run a peak model, whichever runtime holds it: weights
//! (`.safetensors`, `.npz`) run in libtorch, `.onnx` files in ONNX Runtime.
//! Both take normalised patches and give (x, y)/psz.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data::push_crop;
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
                Runtime::Torch { net, device, .. } => {
                    let p = self.psz as i64;
                    let t = Tensor::from_slice(chunk)
                        .view([m as i64, 1, p, p])
                        .to_device(*device);
                    let y = tch::no_grad(|| net.forward(&t))
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float)
                        .flatten(0, -1);
                    let y = Vec::<f32>::try_from(y).map_err(|e| format!("torch output: {e}"))?;
                    out.extend(y.chunks_exact(2).map(|c| [c[0], c[1]]));
                }
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
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..set.len() {
            push_crop(set, i, (0, 0), &mut x, &mut y);
        }
        let p = self.predict(&x, set.len(), batch)?;
        let psz = self.psz as f64;
        Ok(p.iter()
            .zip(y.chunks_exact(2))
            .map(|(a, b)| f64::from(a[0] - b[0]).hypot(f64::from(a[1] - b[1])) * psz)
            .collect())
    }
}
