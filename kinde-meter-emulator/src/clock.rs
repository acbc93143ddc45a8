//! Wall-clock times as RFC 3339 text, both ways, without a date-time crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::validate::check_rfc3339;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a number of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`, in UTC, truncated to the second. Times before
/// 1970 are written as 1970-01-01T00:00:00Z (the emulator never makes one).
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses an RFC 3339 date-time (as [`check_rfc3339`] accepts it); `None` when
/// it is malformed or before 1970.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    check_rfc3339(s).ok()?;
    let num = |range: std::ops::Range<usize>| -> Option<i64> { s.get(range)?.parse().ok() };
    let days = days_from_civil(
        num(0..4)?,
        u32::try_from(num(5..7)?).ok()?,
        u32::try_from(num(8..10)?).ok()?,
    );
    let mut secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let rest = s.get(19..)?;
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let mut nanos: u32 = 0;
    for (i, c) in fraction.bytes().enumerate().take(9) {
        nanos += u32::from(c - b'0') * 10u32.pow(8 - u32::try_from(i).ok()?);
    }
    if zone != "Z" {
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let h: i64 = zone.get(1..3)?.parse().ok()?;
        let m: i64 = zone.get(4..6)?.parse().ok()?;
        secs -= sign * (h * 3600 + m * 60);
    }
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01T00:00:00Z
        assert_eq!(format_rfc3339(t), "2026-12-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00Z"), Some(t));
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(951_825_599)),
            "2000-02-29T11:59:59Z"
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T01:30:00.25+01:30"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2026-11-30T23:00:00-01:00"),
            Some(t),
            "a negative offset is behind UTC"
        );
        assert_eq!(parse_rfc3339("2026-12-01"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        for days in [-1, 0, 59, 60, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
