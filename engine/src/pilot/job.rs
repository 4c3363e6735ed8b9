//! The batch job a pilot runs in: its id, reservation and when it ends.

use std::time::Duration;

/// The batch job this pilot runs in, if any.
pub fn batch_job() -> Option<String> {
    ["SLURM_JOB_ID", "PBS_JOBID"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
}

/// The reservation the batch job runs in (Slurm says; PBS jobs are told by
/// their script).
pub fn reservation() -> Option<String> {
    std::env::var("SLURM_JOB_RESERVATION")
        .ok()
        .filter(|r| !r.trim().is_empty())
}

/// When the allocation ends (µs since epoch): an explicit walltime wins, then
/// the end the job script computed (`--walltime-end`), then Slurm's
/// `SLURM_JOB_END_TIME` (Unix seconds).
pub fn walltime_end_us(
    explicit: Option<Duration>,
    end_s: Option<i64>,
    started_us: i64,
) -> Option<i64> {
    if let Some(w) = explicit {
        return Some(started_us + w.as_micros() as i64);
    }
    if let Some(t) = end_s.filter(|&t| t > 0) {
        return Some(t * 1_000_000);
    }
    std::env::var("SLURM_JOB_END_TIME")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|&t| t > 0)
        .map(|t| t * 1_000_000)
}
