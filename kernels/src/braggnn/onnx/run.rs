//! Inference with ONNX Runtime. The runtime library is opened once per
//! process, from `ORT_DYLIB_PATH` (the setup script points it at the
//! `onnxruntime` wheel's library) or the loader's search path, so that a
//! machine without it builds and runs every other kernel, and a missing
//! library is an error that says where to point.

use std::path::Path;
use std::sync::OnceLock;

use ort::ep::{ExecutionProvider, CUDA};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::backend::cuda_request;

/// Loads the runtime library and creates the process's environment once
/// (sessions hold on to it); the error says why it cannot be used.
fn runtime() -> Result<&'static ort::environment::Environment, String> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var("ORT_DYLIB_PATH")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "libonnxruntime.so".into());
        ort::init_from(&lib)
            .map_err(|e| {
                format!(
                    "ONNX Runtime library {lib} cannot be loaded ({e}); set ORT_DYLIB_PATH to a libonnxruntime.so (scripts/setup.sh puts one under .cache/venv)"
                )
            })?
            .with_name("beamflow")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("ONNX Runtime {lib}: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// An ONNX peak model in a session (see the contract in [`super`]).
pub struct OnnxNet {
    session: Session,
    input: String,
    output: String,
    psz: usize,
    /// The model's fixed batch size, if it has one.
    fixed_batch: Option<usize>,
    /// `ort:cpu` or `ort:cuda:N`.
    pub device: String,
    /// Why the device is not the one asked for.
    pub device_note: Option<String>,
}

fn tensor_dims(t: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

impl OnnxNet {
    /// Opens `path` on `device` (`cpu`, `cuda`, `cuda:N` or `auto`) with
    /// `threads` intra-op threads (0: ONNX Runtime's choice), checking the
    /// model against the contract.
    pub fn open(path: &Path, device: &str, threads: usize) -> Result<OnnxNet, String> {
        let env = runtime()?;
        let p = path.display();
        let e = |e: ort::Error<ort::session::builder::SessionBuilder>| format!("{p}: {e}");
        let mut builder = Session::builder(env)
            .map_err(|e| format!("{p}: {e}"))?
            .with_inter_threads(1)
            .map_err(e)?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(e)?;
        }
        let (mut used, mut note) = ("ort:cpu".to_string(), None);
        if let Some(index) = cuda_request(device)? {
            if CUDA::is_available().unwrap_or(false) {
                let cuda = CUDA::default().with_device_id(index as i32);
                builder = builder
                    .with_execution_providers([cuda.build().error_on_failure()])
                    .map_err(e)?;
                used = format!("ort:cuda:{index}");
            } else if device != "auto" {
                note = Some(format!(
                    "{device} asked for, but this ONNX Runtime has no CUDA execution provider (the onnxruntime-gpu build has one): running on the CPU"
                ));
            }
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| format!("{p}: {e}"))?;
        let contract =
            "a peak model takes one float32 input [N,1,P,P] and gives one float32 output [N,2]";
        let (inputs, outputs) = (session.inputs(), session.outputs());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(format!(
                "{p}: the model has {} inputs and {} outputs; {contract}",
                inputs.len(),
                outputs.len()
            ));
        }
        let (input, output) = (&inputs[0], &outputs[0]);
        let (psz, fixed_batch) = match tensor_dims(input.dtype()) {
            Some((TensorElementType::Float32, d))
                if d.len() == 4 && d[1] == 1 && d[2] == d[3] && d[2] > 0 && d[2] % 2 == 1 =>
            {
                (d[2] as usize, (d[0] > 0).then_some(d[0] as usize))
            }
            _ => {
                return Err(format!(
                    "{p}: input {} is {}; {contract} with P odd",
                    input.name(),
                    input.dtype()
                ))
            }
        };
        match tensor_dims(output.dtype()) {
            Some((TensorElementType::Float32, d)) if d.len() == 2 && d[1] == 2 => {}
            _ => {
                return Err(format!(
                    "{p}: output {} is {}; {contract}",
                    output.name(),
                    output.dtype()
                ))
            }
        }
        Ok(OnnxNet {
            input: input.name().to_string(),
            output: output.name().to_string(),
            session,
            psz,
            fixed_batch,
            device: used,
            device_note: note,
        })
    }

    /// The batch size the model is fixed to, if it is.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// The patch side the model takes.
    pub fn psz(&self) -> usize {
        self.psz
    }

    /// `n` normalised patches (row-major, `psz²` each) → `n` (x, y)/psz.
    pub fn predict(&mut self, x: &[f32], n: usize) -> Result<Vec<[f32; 2]>, String> {
        let side = self.psz as i64;
        let per = self.psz * self.psz;
        assert_eq!(x.len(), n * per, "patch buffer size");
        let mut out = Vec::with_capacity(n);
        let chunk = self.fixed_batch.unwrap_or(n.max(1));
        let mut padded = Vec::new();
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let mut data = &x[start * per..(start + m) * per];
            if self.fixed_batch.is_some() && m < chunk {
                padded.clear();
                padded.extend_from_slice(data);
                padded.resize(chunk * per, 0.0);
                data = &padded;
            }
            let rows = data.len() / per;
            let t = TensorRef::from_array_view(([rows as i64, 1, side, side], data))
                .map_err(|e| format!("ONNX input: {e}"))?;
            let res = self
                .session
                .run(ort::inputs![self.input.as_str() => t])
                .map_err(|e| format!("ONNX Runtime: {e}"))?;
            let (shape, y) = res[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("ONNX output: {e}"))?;
            if shape.len() != 2 || shape[0] as usize != rows || shape[1] != 2 {
                return Err(format!(
                    "ONNX output has shape {shape:?}, expected [{rows}, 2]"
                ));
            }
            out.extend(y.chunks_exact(2).take(m).map(|c| [c[0], c[1]]));
        }
        Ok(out)
    }
}
