//! Time in UTC: seconds since the Unix epoch, and calendar dates without a
//! time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `time` (0 before it).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// The civil date (year, month 1–12, day 1–31) of `days` since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::date(0), (1970, 1, 1));
        assert_eq!(super::date(11_016), (2000, 2, 29));
        assert_eq!(super::date(20_790), (2026, 12, 3));
        assert_eq!(super::date(-1), (1969, 12, 31));
    }
}
