//! Kernels that do no science: `noop` measures the engine's own cost per task,
//! `sleep` stands in for a compute step of known length in tests and demos,
//! `fault` fails on purpose so a site can see what a crashing step does to
//! its pilots (and the fault-injection tests can make one crash).

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

/// Fails the way `mode` says: `error` (an ordinary kernel error), `panic`,
/// `abort` (SIGABRT) or `segfault` (SIGSEGV). In-process, the last two take
/// the whole process with them; that is what `isolate = true` is for.
pub struct Fault;

impl Kernel for Fault {
    fn name(&self) -> &'static str {
        "fault"
    }
    fn summary(&self) -> &'static str {
        "fails on purpose (`mode` = error, panic, abort or segfault) to test isolation and recovery"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }
    fn params(&self) -> &'static [&'static str] {
        &["mode"]
    }
    fn run(&self, params: &Value, _ctx: &KernelContext) -> Result<Value, KernelError> {
        let mode = match params.get("mode") {
            None | Some(Value::Null) => "error",
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(KernelError::param(
                    "mode",
                    format!("expected a string, got {v}"),
                ))
            }
        };
        match mode {
            "error" => Err(KernelError::Failed(
                "failed on purpose (mode = error)".into(),
            )),
            "panic" => panic!("fault kernel: panicking on purpose (mode = panic)"),
            "abort" => std::process::abort(),
            "segfault" => {
                // SAFETY: no memory effects. The Rust runtime catches SIGSEGV
                // (to report stack overflows) and returns from its handler;
                // with the default action restored the signal ends the
                // process, as a real invalid access would.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::raise(libc::SIGSEGV);
                }
                unreachable!("SIGSEGV was raised and did not end the process")
            }
            other => Err(KernelError::param(
                "mode",
                format!("`{other}` is not one of error, panic, abort, segfault"),
            )),
        }
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
    fn fault_fails_as_asked_and_names_unknown_modes() {
        let err = Fault.run(&json!({}), &ctx(Arc::default())).unwrap_err();
        assert_eq!(err.to_string(), "failed on purpose (mode = error)");
        let err = Fault
            .run(&json!({"mode": "melt"}), &ctx(Arc::default()))
            .unwrap_err();
        assert!(err.to_string().contains("`melt` is not one of"), "{err}");
        let panicked = std::panic::catch_unwind(|| {
            let _ = Fault.run(&json!({"mode": "panic"}), &ctx(Arc::default()));
        });
        assert!(panicked.is_err());
    }

    #[test]
    fn registry_finds_builtins_by_name() {
        assert_eq!(crate::find("noop").unwrap().name(), "noop");
        assert!(crate::find("xpcs-nonexistent").is_none());
    }
}
