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

/// `x` to `digits` significant digits, as a person reads a measurement:
/// plain between 0.01 and 10 000 (`286.5`, `0.4983`), else scientific
/// (`8.383e5`, `2.1e-4`); "—" for no number at all.
pub fn sig(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let digits = digits.max(1);
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor() as i32;
    if (-2..4).contains(&mag) {
        let decimals = (digits as i32 - 1 - mag).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.prec$e}", prec = digits - 1)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_print_to_their_significant_digits() {
        assert_eq!(sig(838256.056351, 4), "8.383e5");
        assert_eq!(sig(7.109632333459633, 4), "7.110");
        assert_eq!(sig(286.47, 4), "286.5");
        assert_eq!(sig(2.8529, 4), "2.853");
        assert_eq!(sig(0.49831, 4), "0.4983");
        assert_eq!(sig(0.000213, 2), "2.1e-4");
        assert_eq!(sig(0.0, 4), "0");
        assert_eq!(sig(f64::NAN, 4), "—");
        assert_eq!(plural(1u64, "step"), "1 step");
        assert_eq!(plural(3u64, "step"), "3 steps");
    }
}
