//! Where a kernel runs: the native CPU code, or libtorch tensors on a
//! device (CUDA, ROCm, XPU or the CPU). One choice for every kernel that
//! has both, with one rule for falling back to the CPU.

/// Which implementation of a kernel runs, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Native code over rayon (the reference backend).
    Cpu,
    /// libtorch tensors on `device` ("cpu", "cuda", "cuda:N", "auto").
    Torch { device: String },
}

impl Backend {
    /// `cpu`, `torch` (device auto), or `torch:DEVICE`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "cpu" => Ok(Backend::Cpu),
            None if s == "torch" => Ok(Backend::Torch {
                device: "auto".into(),
            }),
            Some(("torch", d)) => Ok(Backend::Torch {
                device: d.to_string(),
            }),
            _ => Err(format!(
                "unknown backend {s:?} (expected cpu, torch or torch:DEVICE, e.g. torch:cuda)"
            )),
        }
    }
}

/// The device a flow step asks for: `auto` is the first GPU the pilot
/// granted the attempt (`cuda:N`), or the CPU when it granted none; any
/// other value stands.
pub fn granted_device(want: &str, gpus: &[u32]) -> String {
    match (want, gpus.first()) {
        ("auto", Some(g)) => format!("cuda:{g}"),
        ("auto", None) => "cpu".into(),
        (other, _) => other.to_string(),
    }
}

/// The CUDA device index `want` ("cpu", "cuda", "gpu", "cuda:N" or
/// "auto") asks for; `None` for the CPU. Runtimes other than libtorch
/// (ONNX Runtime) use it to pick their execution provider.
pub fn cuda_request(want: &str) -> Result<Option<usize>, String> {
    match want {
        "cpu" => Ok(None),
        "auto" | "cuda" | "gpu" => Ok(Some(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                format!("unknown device {other:?} (expected cpu, cuda, cuda:N or auto)")
            }),
    }
}

#[cfg(feature = "torch")]
mod torch_device {
    use tch::Device;

    /// The device `want` names ("cpu", "cuda", "cuda:N" or "auto"), or the CPU
    /// with the reason when that device is not available here.
    pub fn device(want: &str) -> Result<(Device, Option<String>), String> {
        let cuda = tch::Cuda::is_available();
        let n = if cuda { tch::Cuda::device_count() } else { 0 };
        match want {
            "cpu" => Ok((Device::Cpu, None)),
            "auto" | "cuda" | "gpu" if cuda => Ok((Device::Cuda(0), None)),
            "auto" => Ok((Device::Cpu, None)),
            "cuda" | "gpu" => Ok((
                Device::Cpu,
                Some("no CUDA device visible to libtorch: the torch backend runs on the CPU".into()),
            )),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
                Some(i) if (i as i64) < n => Ok((Device::Cuda(i), None)),
                Some(i) => Ok((
                    Device::Cpu,
                    Some(format!(
                        "CUDA device {i} not visible to libtorch ({n} visible): the torch backend runs on the CPU"
                    )),
                )),
                None => Err(format!(
                    "unknown device {other:?} (expected cpu, cuda, cuda:N or auto)"
                )),
            },
        }
    }

    /// The devices libtorch can run on here, as the names `device` takes:
    /// "cpu", then "cuda:0", "cuda:1", …
    pub fn torch_devices() -> Vec<String> {
        let n = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        std::iter::once("cpu".to_string())
            .chain((0..n).map(|i| format!("cuda:{i}")))
            .collect()
    }

    /// libtorch's intra-op threads for this process (benchmarks set it to
    /// the cores they measure with).
    pub fn set_torch_threads(n: usize) {
        tch::set_num_threads(n.max(1) as i32);
    }

    /// Human name of a device for summaries.
    pub fn device_name(d: Device) -> String {
        match d {
            Device::Cpu => "torch:cpu".into(),
            Device::Cuda(i) => format!("torch:cuda:{i}"),
            other => format!("torch:{other:?}").to_lowercase(),
        }
    }
}

/// libtorch's device type, for callers that do not depend on tch.
#[cfg(feature = "torch")]
pub use tch::Device as TorchDevice;
#[cfg(feature = "torch")]
pub use torch_device::{device, device_name, set_torch_threads, torch_devices};
