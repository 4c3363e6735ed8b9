//! Durations and amounts of memory as people write them (`"90s"`, `"4GB"`),
//! bounded so that no value overflows the clocks and counters it ends up in.

/// Longest duration a flow, site or command line may give: a year, in
/// seconds. Longer ones are typos, and would overflow the µs clocks and
/// `Duration`s they end up in.
pub const MAX_DURATION_S: f64 = 365.0 * 86_400.0;

/// Largest amount of memory a flow or site may give, in MB (1 PiB).
pub const MAX_MEMORY_MB: u64 = 1 << 30;

/// `"90s"`, `"5m"`, `"1h 30m"`, or a bare number of seconds; at most a year.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let secs = match t.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => x,
        _ => humantime::parse_duration(t)
            .map(|d| d.as_secs_f64())
            .map_err(|e| {
                format!("`{s}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"2h\"")
            })?,
    };
    if secs > MAX_DURATION_S {
        return Err(format!("`{s}` is longer than a year"));
    }
    Ok(secs)
}

/// `"512MB"`, `"4GB"`, `"1.5 GiB"`, or a bare number of megabytes.
pub fn parse_memory_mb(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num.parse().map_err(|_| {
        format!("`{s}` is not an amount of memory; write e.g. \"512MB\" or \"4GB\"")
    })?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        other => {
            return Err(format!(
                "`{s}`: unknown memory unit `{other}` (use MB, GB or TB)"
            ))
        }
    };
    let mb = (x * mult).ceil();
    if mb > MAX_MEMORY_MB as f64 {
        return Err(format!("`{s}` is more than {MAX_MEMORY_MB} MB (1 PiB)"));
    }
    Ok(mb as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_memory() {
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("1h 30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("2.5").unwrap(), 2.5);
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_memory_mb("4GB").unwrap(), 4096);
        assert_eq!(parse_memory_mb("512").unwrap(), 512);
        assert!(parse_memory_mb("4 parsecs").is_err());
        assert_eq!(parse_duration("365d").unwrap(), MAX_DURATION_S);
        assert_eq!(
            parse_duration("1e300").unwrap_err(),
            "`1e300` is longer than a year"
        );
        assert_eq!(parse_memory_mb("1024TB").unwrap(), MAX_MEMORY_MB);
        assert_eq!(
            parse_memory_mb("99999999999999999999TB").unwrap_err(),
            "`99999999999999999999TB` is more than 1073741824 MB (1 PiB)"
        );
    }
}
