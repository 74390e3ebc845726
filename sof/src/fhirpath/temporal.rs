//! Comparison of dates, dateTimes and times as FHIRPath defines it: component by component, in
//! UTC when both values have a time and a zone; when one value is more precise than the other
//! and they agree as far as both go, the result is unknown (an empty result).

use std::cmp::Ordering;

use super::lex::{is_date, is_time, split_date_time};

/// Year, month, day, hour, minute, and seconds in milliseconds; `len` of them are given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Temporal {
    parts: [i64; 6],
    len: usize,
    time_only: bool,
    /// Offset from UTC in minutes.
    zone: Option<i64>,
}

fn parse_time(s: &str, parts: &mut [i64; 6], start: usize) -> Option<usize> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let mut n = 0;
    for (i, p) in hms.split(':').enumerate() {
        parts[start + i] = p.parse().ok()?;
        n = i + 1;
    }
    if n == 3 {
        let ms: i64 = match frac {
            Some(f) => {
                let mut d: String = f.chars().take(3).collect();
                while d.len() < 3 {
                    d.push('0');
                }
                d.parse().ok()?
            }
            None => 0,
        };
        parts[start + 2] = parts[start + 2] * 1000 + ms;
    }
    Some(n)
}

fn parse_zone(z: &str) -> Option<i64> {
    if z == "Z" {
        return Some(0);
    }
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let h: i64 = z.get(1..3)?.parse().ok()?;
    let m: i64 = z.get(4..6)?.parse().ok()?;
    Some(sign * (h * 60 + m))
}

impl Temporal {
    /// Reads a date, dateTime, instant or time (`T` prefix of a time literal already removed).
    pub(crate) fn parse(s: &str) -> Option<Temporal> {
        let mut parts = [0i64; 6];
        if is_time(s) && !is_date(s) {
            let len = parse_time(s, &mut parts, 3)?;
            return Some(Temporal {
                parts,
                len,
                time_only: true,
                zone: None,
            });
        }
        let (date, time, zone) = split_date_time(s)?;
        let mut len = 0;
        for (i, p) in date.split('-').enumerate() {
            parts[i] = p.parse().ok()?;
            len = i + 1;
        }
        if let Some(t) = time {
            if len != 3 {
                return None;
            }
            len = 3 + parse_time(t, &mut parts, 3)?;
        }
        Some(Temporal {
            parts,
            len,
            time_only: false,
            zone: zone.and_then(parse_zone),
        })
    }

    /// The same instant in UTC (for values with at least hours and a zone).
    fn to_utc(&self) -> [i64; 6] {
        let p = self.parts;
        let Some(zone) = self.zone else { return p };
        if self.len < 4 || self.time_only {
            return p;
        }
        let days = days_from_civil(p[0], p[1], p[2]);
        let minutes = days * 1440 + p[3] * 60 + p[4] - zone;
        let (d, m) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
        let (y, mo, dd) = civil_from_days(d);
        [y, mo, dd, m / 60, m % 60, p[5]]
    }

    /// FHIRPath ordering; `None` when it is unknown (different precision, equal as far as both
    /// go) or the values are not comparable (a time and a date).
    pub(crate) fn compare(&self, other: &Temporal) -> Option<Ordering> {
        if self.time_only != other.time_only {
            return None;
        }
        let both_zoned = self.zone.is_some() && other.zone.is_some();
        let (a, b) = if both_zoned {
            (self.to_utc(), other.to_utc())
        } else {
            (self.parts, other.parts)
        };
        // A time's parts are in the hour..second slots.
        let start = if self.time_only { 3 } else { 0 };
        let (ea, eb) = (start + self.len, start + other.len);
        for i in start..ea.min(eb) {
            match a[i].cmp(&b[i]) {
                Ordering::Equal => {}
                o => return Some(o),
            }
        }
        (ea == eb).then_some(Ordering::Equal)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Option<Ordering> {
        Temporal::parse(a)
            .unwrap_or_else(|| panic!("{a}"))
            .compare(&Temporal::parse(b).unwrap_or_else(|| panic!("{b}")))
    }

    #[test]
    fn compares_like_fhirpath() {
        assert_eq!(cmp("2020-01-01", "2020-01-01"), Some(Ordering::Equal));
        assert_eq!(cmp("2020-01-01", "2020-01-02"), Some(Ordering::Less));
        assert_eq!(cmp("2021", "2020-12-31"), Some(Ordering::Greater));
        // Different precision, equal as far as both go: unknown.
        assert_eq!(cmp("2020-01", "2020-01-15"), None);
        assert_eq!(cmp("2020-01-01T10:00:00Z", "2020-01-01"), None);
        // Zones: the same instant.
        assert_eq!(
            cmp("2020-01-01T10:00:00+02:00", "2020-01-01T08:00:00Z"),
            Some(Ordering::Equal)
        );
        assert_eq!(
            cmp("2020-01-01T00:30:00+01:00", "2019-12-31T23:45:00Z"),
            Some(Ordering::Less)
        );
        // Seconds and milliseconds are one precision.
        assert_eq!(
            cmp("2020-01-01T10:00:00.500Z", "2020-01-01T10:00:00Z"),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp("10:00", "09:59:59"), Some(Ordering::Greater));
        assert_eq!(cmp("10:00", "10:00:30"), None);
        assert_eq!(cmp("10:00", "2020-01-01"), None);
        assert!(Temporal::parse("2020-13").is_some()); // lexically a date; month is not checked
        assert!(Temporal::parse("hello").is_none());
    }

    #[test]
    fn civil_days_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (1969, 12, 31), (2024, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(days_from_civil(1970, 1, 2), 1);
    }
}
