//! What this machine is and offers: its name, cores, memory and GPUs, as the
//! pilot registers them, the kernel steps size their thread pools by them and
//! the benches report them.

/// Usable cores (cgroup and affinity aware, through the standard library).
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Memory in MB: what the Slurm job was granted (`SLURM_MEM_PER_NODE`, or
/// `SLURM_MEM_PER_CPU` × `SLURM_CPUS_ON_NODE`), else the node's total from
/// /proc/meminfo.
pub fn memory_mb() -> u64 {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(mb) = var("SLURM_MEM_PER_NODE").filter(|&m| m > 0) {
        return mb;
    }
    if let (Some(per), Some(n)) = (var("SLURM_MEM_PER_CPU"), var("SLURM_CPUS_ON_NODE")) {
        if per > 0 && n > 0 {
            return per * n;
        }
    }
    node_memory_mb()
}

/// Total memory in MB from /proc/meminfo.
fn node_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// GPU indices: `CUDA_VISIBLE_DEVICES` / `ROCR_VISIBLE_DEVICES` when the batch
/// system set them, else the devices the NVIDIA driver lists. Device
/// discovery through the CUDA driver comes with the kernels that use it.
pub fn gpus() -> Vec<u32> {
    for var in ["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"] {
        if let Ok(v) = std::env::var(var) {
            let ids: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            if !ids.is_empty() || v.trim().is_empty() {
                return ids;
            }
        }
    }
    match std::fs::read_dir("/proc/driver/nvidia/gpus") {
        Ok(rd) => (0..rd.count() as u32).collect(),
        Err(_) => vec![],
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// What the benchmark ran on: enough to compare numbers across machines.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "host": hostname(),
        "cpu_model": cpu,
        "cpus": cpus(),
        "memory_mb": memory_mb(),
        "gpus": gpus().len(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "beamflow": env!("CARGO_PKG_VERSION"),
    })
}
