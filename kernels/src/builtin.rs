//! Kernels that do no science: `noop` measures the engine's own cost per task,
//! `sleep` stands in for a compute step of known length in tests and demos.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::registry::{param_f64, Kernel, KernelContext, KernelError};

/// Returns at once. `beamflow bench engine` pushes thousands of these through
/// server and pilot, so everything it measures is engine overhead.
pub struct Noop;

impl Kernel for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn summary(&self) -> &'static str {
        "does nothing; measures engine overhead per task"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }
    fn params(&self) -> &'static [&'static str] {
        &[]
    }
    fn run(&self, _params: &Value, _ctx: &KernelContext) -> Result<Value, KernelError> {
        Ok(json!({}))
    }
}

/// Sleeps `seconds` (default 1), waking every 10 ms to honour cancellation.
pub struct Sleep;

impl Kernel for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn summary(&self) -> &'static str {
        "sleeps for `seconds`; stands in for a compute step of known length"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["slept_s"]
    }
    fn params(&self) -> &'static [&'static str] {
        &["seconds"]
    }
    fn run(&self, params: &Value, ctx: &KernelContext) -> Result<Value, KernelError> {
        let seconds = param_f64(params, "seconds", 1.0)?;
        let start = Instant::now();
        let total = Duration::from_secs_f64(seconds);
        while start.elapsed() < total {
            if ctx.cancelled() {
                return Err(KernelError::Cancelled);
            }
            let left = total.saturating_sub(start.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        Ok(json!({ "slept_s": start.elapsed().as_secs_f64() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn ctx(cancel: Arc<AtomicBool>) -> KernelContext {
        KernelContext::new(std::env::temp_dir(), 1, vec![], cancel)
    }

    #[test]
    fn sleep_sleeps_for_the_requested_time() {
        let out = Sleep
            .run(&json!({"seconds": 0.05}), &ctx(Arc::default()))
            .unwrap();
        let slept = out["slept_s"].as_f64().unwrap();
        assert!(slept >= 0.05, "slept only {slept}s");
    }

    #[test]
    fn sleep_rejects_negative_seconds() {
        let err = Sleep
            .run(&json!({"seconds": -1}), &ctx(Arc::default()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter `seconds`: expected a finite number >= 0, got -1"
        );
    }

    #[test]
    fn sleep_stops_when_cancelled() {
        let cancel = Arc::new(AtomicBool::new(true));
        let err = Sleep
            .run(&json!({"seconds": 30}), &ctx(cancel))
            .unwrap_err();
        assert!(matches!(err, KernelError::Cancelled));
    }

    #[test]
    fn registry_finds_builtins_by_name() {
        assert_eq!(crate::find("noop").unwrap().name(), "noop");
        assert!(crate::find("xpcs-nonexistent").is_none());
    }
}
