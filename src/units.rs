//! Human units in config files: durations (`250ms`, `10s`, `5m`, `4h`, `90d`) and sizes (`512KiB`, `16MiB`, `1GB`).

use std::time::Duration;

/// The longest duration accepted: 100 years (36,500 days).
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parse a duration such as `10s`, `1500ms`, `5m`, `4h`, `2d` or a sum of them, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration (e.g. 10s, 500ms, 5m, 4h, 2d)"
            ));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}` is not a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            "w" => n * 7.0 * 86400.0,
            "" => return Err(format!("`{s}` needs a unit (ms, s, m, h, d, w)")),
            u => {
                return Err(format!(
                    "`{s}`: unknown duration unit `{u}` (ms, s, m, h, d, w)"
                ));
            }
        };
        rest = &rest[unit_len..];
        // A number too large for a Duration (or the sum of several) is an error, not a panic; so is anything
        // beyond MAX_DURATION, which keeps later arithmetic (backoff doubling, deadlines) far from overflow.
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|d| *d <= MAX_DURATION)
            .ok_or_else(|| format!("`{s}` is longer than 100 years"))?;
    }
    Ok(total)
}

/// Parse a size such as `16MiB`, `512KiB`, `1GB`, `100kB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if split == 0 {
        return Err(format!("`{s}` is not a size (e.g. 16MiB, 512KiB, 1GB)"));
    }
    let n: f64 = t[..split]
        .parse()
        .map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match t[split..].trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" => 1000,
        "KiB" | "Ki" => 1 << 10,
        "MB" | "M" => 1_000_000,
        "MiB" | "Mi" => 1 << 20,
        "GB" | "G" => 1_000_000_000,
        "GiB" | "Gi" => 1 << 30,
        u => {
            return Err(format!(
                "`{s}`: unknown size unit `{u}` (B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("100kB"), Ok(100_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3XB").is_err());
    }
}
