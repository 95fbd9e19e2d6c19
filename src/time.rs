//! Durations and time units. Internally every instant is i64 nanoseconds since the epoch.

use crate::error::{Error, Result};

pub const NS_PER_US: i64 = 1_000;
pub const NS_PER_MS: i64 = 1_000_000;
pub const NS_PER_S: i64 = 1_000_000_000;

const UNITS: &[(&str, i64)] = &[
    ("w", 7 * 86_400 * NS_PER_S),
    ("d", 86_400 * NS_PER_S),
    ("h", 3_600 * NS_PER_S),
    ("m", 60 * NS_PER_S),
    ("s", NS_PER_S),
    ("ms", NS_PER_MS),
    ("us", NS_PER_US),
    ("ns", 1),
];

/// Parse a duration such as `30s`, `5m`, `1h30m`, `7d`, `250ms` into nanoseconds.
/// `field` names the spec field in the error.
pub fn parse_duration(text: &str, field: &str) -> Result<i64> {
    let bad = |why: &str| {
        Error::spec(
            field,
            format!(
                "invalid duration {text:?}: {why} (expected e.g. '30s', '5m', '1h', '7d', '1h30m'; units: ns us ms s m h d w)"
            ),
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad("each part must start with a whole number"));
        }
        let number: i64 = s[start..i].parse().map_err(|_| bad("number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let Some(&(_, factor)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(bad(&format!("unknown unit {unit:?}")));
        };
        let part = number.checked_mul(factor).ok_or_else(|| bad("too large"))?;
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
    }
    if total <= 0 {
        return Err(bad("must be positive"));
    }
    Ok(total)
}

/// The shortest canonical spelling of a duration in nanoseconds, e.g. 5400e9 -> "90m",
/// 86400e9 -> "1d". Round-trips through [`parse_duration`].
pub fn format_duration(ns: i64) -> String {
    for &(unit, factor) in UNITS {
        if ns % factor == 0 {
            return format!("{}{}", ns / factor, unit);
        }
    }
    format!("{ns}ns")
}

/// A unit for integer timestamps.
pub fn unit_factor(unit: &str, field: &str) -> Result<i64> {
    match unit {
        "s" => Ok(NS_PER_S),
        "ms" => Ok(NS_PER_MS),
        "us" => Ok(NS_PER_US),
        "ns" => Ok(1),
        other => Err(Error::spec(
            field,
            format!("unknown timestamp unit {other:?} (expected 's', 'ms', 'us' or 'ns')"),
        )),
    }
}

/// Floor division for possibly negative instants.
#[inline]
/// An instant as people read it: ISO 8601 in UTC, e.g. `2013-01-01T05:00:00Z` (with 3, 6 or
/// 9 digits of a second when it has a fraction). For error messages and reports.
pub fn iso(ns: i64) -> String {
    let secs = ns.div_euclid(NS_PER_S);
    let sub = ns.rem_euclid(NS_PER_S) as u32;
    match chrono::DateTime::from_timestamp(secs, sub) {
        Some(d) => d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => format!("{ns} ns since the epoch"),
    }
}

pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// The nanoseconds an ISO 8601 time's fraction of a second carries beyond microseconds
/// (`"...:05.123456789"` -> 789): what `datetime.fromisoformat` drops. Digits beyond the ninth
/// are below a nanosecond and ignored, as for every other input; anything that is not
/// `YYYY-MM-DD[T ]HH:MM:SS[.,]digits...` carries none.
pub fn sub_microsecond_ns(text: &str) -> i64 {
    let b = text.as_bytes();
    let time_sep = matches!(b.get(10), Some(b'T' | b't' | b' '));
    if !time_sep || !matches!(b.get(19), Some(b'.' | b',')) {
        return 0;
    }
    let digits = b.get(20..).unwrap_or_default();
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n <= 6 {
        return 0;
    }
    // digits 7 to 9 (padded with zeros): the nanoseconds below the microsecond
    (6..9).fold(0i64, |acc, i| {
        let d = if i < n {
            digits.get(i).copied().unwrap_or(b'0')
        } else {
            b'0'
        };
        acc * 10 + i64::from(d - b'0')
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sub_microsecond_digits() {
        use super::sub_microsecond_ns as f;
        assert_eq!(f("2024-03-01T08:00:00.123456789+00:00"), 789);
        assert_eq!(f("2024-03-01 08:00:00,1234567+00:00"), 700);
        assert_eq!(f("2024-03-01T08:00:00.1234567891Z"), 789);
        assert_eq!(f("2024-03-01T08:00:00.123456+00:00"), 0);
        assert_eq!(f("2024-03-01T08:00:00+00:00"), 0);
        assert_eq!(f("2024-03-01"), 0);
        assert_eq!(f(""), 0);
        assert_eq!(f("2024-03-01T08:00:00.1234567x9"), 700);
    }

    use super::*;

    #[test]
    fn iso_instants() {
        assert_eq!(iso(1_357_016_400 * NS_PER_S), "2013-01-01T05:00:00Z");
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(iso(1_500 * NS_PER_MS), "1970-01-01T00:00:01.500Z");
        assert_eq!(iso(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(iso(i64::MIN), "1677-09-21T00:12:43.145224192Z");
    }
}
