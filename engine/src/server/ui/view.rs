//! Formatting shared by the templates: times, durations, sizes.

use minijinja::Environment;

pub(super) fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("ts", ts);
    env.add_filter("secs", secs);
    env.add_filter("bytes", bytes);
}

/// µs since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC), `-` when unset.
pub(super) fn ts(us: Option<i64>) -> String {
    match us {
        Some(us) if us > 0 => crate::util::fmt_ts(us)
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string(),
        _ => "-".into(),
    }
}

/// The UTC day of a timestamp, `YYYY-MM-DD`.
pub(super) fn day(us: i64) -> String {
    ts(Some(us)).chars().take(10).collect()
}

fn secs(s: Option<f64>) -> String {
    s.map(crate::util::fmt_secs).unwrap_or_else(|| "-".into())
}

pub(super) fn bytes(n: Option<f64>) -> String {
    let Some(n) = n else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The µs between two timestamps as seconds, `None` unless both are set.
pub(super) fn span_s(from: Option<i64>, to: Option<i64>) -> Option<f64> {
    Some((to? - from?) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ts(Some(1_764_684_000_000_000)), "2025-12-02 14:00:00");
        assert_eq!(ts(None), "-");
        assert_eq!(day(1_764_684_000_000_000), "2025-12-02");
        assert_eq!(bytes(Some(512.0)), "512 B");
        assert_eq!(bytes(Some(3.5 * 1024.0 * 1024.0)), "3.5 MiB");
        assert_eq!(span_s(Some(1_000_000), Some(3_500_000)), Some(2.5));
        assert_eq!(span_s(None, Some(1)), None);
    }
}
