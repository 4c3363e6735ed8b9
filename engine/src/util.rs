//! Small shared helpers: the clock, how times print, a median.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the unit of every timestamp beamflow stores.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (seconds) of a timestamp in microseconds.
pub fn fmt_ts(us: i64) -> String {
    if us <= 0 {
        return "-".to_string();
    }
    let t = UNIX_EPOCH + std::time::Duration::from_micros(us as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds, printed to a precision that suits their size.
pub fn fmt_secs(s: f64) -> String {
    // An empty f64 sum is -0.0; time is never negative.
    let s = s.max(0.0);
    if !s.is_finite() {
        "-".to_string()
    } else if s < 0.001 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// The upper median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// `n` and `what`, in the plural unless `n` is 1: "1 run", "3 runs".
pub fn plural(n: impl Into<u64>, what: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
