//! Small helpers that turn numbers into the words of reasons and explanations.

/// A duration in words: `800 ms`, `12 s`, `2 min 5 s`, `1 h 3 min`.
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let s = ms / 1_000;
    if s < 60 {
        let tenths = (ms % 1_000) / 100;
        return if tenths == 0 || s >= 10 {
            format!("{s} s")
        } else {
            format!("{s}.{tenths} s")
        };
    }
    let (m, s) = (s / 60, s % 60);
    if m < 60 {
        return if s == 0 {
            format!("{m} min")
        } else {
            format!("{m} min {s} s")
        };
    }
    let (h, m) = (m / 60, m % 60);
    if m == 0 {
        format!("{h} h")
    } else {
        format!("{h} h {m} min")
    }
}

/// A signed playbook duration in words (negative values are shown as given).
pub fn duration_i64(ms: i64) -> String {
    if ms < 0 {
        format!("{ms} ms")
    } else {
        duration(ms as u64)
    }
}

/// Joins items as `a`, `a and b`, `a, b and c`.
pub fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A number without a trailing `.0`.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Upper-cases the first letter of a sentence.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// A Unix time in milliseconds as `HH:MM UTC (YYYY-MM-DD)`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{h:02}:{m:02} UTC ({y:04}-{mo:02}-{d:02})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_clock_and_date() {
        assert_eq!(utc(0), "00:00 UTC (1970-01-01)");
        assert_eq!(
            utc(1_772_323_200_000 + 20 * 3_600_000),
            "20:00 UTC (2026-03-01)"
        );
        assert_eq!(utc(951_825_600_000), "12:00 UTC (2000-02-29)");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(1_500), "1.5 s");
        assert_eq!(duration(30_000), "30 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(3_780_000), "1 h 3 min");
    }

    #[test]
    fn lists_use_and() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(list(&v(&["a"])), "a");
        assert_eq!(list(&v(&["a", "b"])), "a and b");
        assert_eq!(list(&v(&["a", "b", "c"])), "a, b and c");
    }
}
