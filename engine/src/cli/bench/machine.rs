//! The machine a benchmark ran on, measured first: its two roofs (STREAM
//! triad bandwidth over all cores, SGEMM peak through BLAS), what it has
//! (CPU model, cores, memory, CUDA devices through the driver, libtorch
//! devices) and what ran (beamflow version and git revision).

use serde::Serialize;

use super::suite::Size;
use beamflow_kernels::gpu::GpuInfo;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub host: String,
    pub cpu_model: String,
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// Threads the kernels ran with (the rayon pool).
    pub threads: usize,
    pub memory_mb: u64,
    pub os: String,
    pub arch: String,
    /// STREAM triad, GB/s (10⁹ bytes), all threads, best of repeats.
    pub triad_gbs: f64,
    /// SGEMM, GFLOP/s, best of repeats: the better of BLAS and libtorch.
    pub sgemm_gflops: f64,
    /// Which of them that was (`blas` or `torch`).
    pub sgemm_by: String,
    /// The kernel set OpenBLAS runs ("SkylakeX", "Haswell", …): a generic
    /// one ("Prescott") on a new CPU means a slow BLAS, not a slow machine.
    pub blas_core: String,
    /// The arrays (doubles per array) and matrix order the roofs came from.
    pub triad_n: usize,
    pub sgemm_n: usize,
    pub gpus: Vec<GpuInfo>,
    /// Why `gpus` is empty, when it is.
    pub gpu_note: Option<String>,
    pub torch_devices: Vec<String>,
    pub beamflow: String,
    pub git: String,
}

/// The commit (HEAD) this binary was built from (`build.rs`); uncommitted
/// changes are not marked.
pub fn git_revision() -> &'static str {
    env!("BEAMFLOW_GIT_REV")
}

/// Measures the roofs and gathers the rest.
pub fn measure(size: Size) -> Machine {
    let (triad_n, sgemm_n) = size.pick((1 << 23, 1024), (1 << 25, 2048), (1 << 27, 4096));
    let triad_gbs = beamflow_kernels::machine::triad_gbs(triad_n, 10);
    let blas = beamflow_kernels::machine::sgemm_gflops(sgemm_n, 3);
    let torch = beamflow_kernels::machine::torch_sgemm_gflops(sgemm_n, 3);
    let (sgemm_gflops, sgemm_by) = if torch > blas {
        (torch, "torch")
    } else {
        (blas, "blas")
    };
    let (gpus, gpu_note) = match beamflow_kernels::gpu::cuda_devices() {
        Ok(g) if g.is_empty() => (g, Some("the CUDA driver reports no devices".into())),
        Ok(g) => (g, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let info = crate::host::machine();
    let text = |k: &str| info[k].as_str().unwrap_or_default().to_string();
    Machine {
        host: text("host"),
        cpu_model: text("cpu_model"),
        cpus: crate::host::cpus() as usize,
        threads: rayon::current_num_threads(),
        memory_mb: info["memory_mb"].as_u64().unwrap_or(0),
        os: text("os"),
        arch: text("arch"),
        triad_gbs,
        sgemm_gflops,
        sgemm_by: sgemm_by.to_string(),
        blas_core: beamflow_kernels::blas::core(),
        triad_n,
        sgemm_n,
        gpus,
        gpu_note,
        torch_devices: beamflow_kernels::backend::torch_devices(),
        beamflow: env!("CARGO_PKG_VERSION").to_string(),
        git: git_revision().to_string(),
    }
}
