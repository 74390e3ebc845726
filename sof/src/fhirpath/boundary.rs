//! `lowBoundary` and `highBoundary` (FHIRPath, experimental in SQL on FHIR v2) for decimals,
//! dates, dateTimes (and instants) and times.

use std::borrow::Cow;

use super::eval::Item;
use super::lex::{is_date, is_time, split_date_time};
use crate::decimal::Decimal;

pub(super) enum Input<'x> {
    /// Text and the item's FHIR type when known.
    Text(&'x str, Option<&'static str>),
    Decimal(Decimal),
}

/// The boundary of one value; `None` (an empty result) when the value has no boundary of the
/// asked precision.
pub(super) fn boundary(
    input: Input<'_>,
    precision: Option<i64>,
    high: bool,
) -> Option<Item<'static>> {
    match input {
        Input::Decimal(d) => decimal(d, precision, high).map(Item::Dec),
        Input::Text(s, ty) => {
            let kind = match ty {
                Some("date") => "date",
                Some("dateTime") | Some("instant") => "dateTime",
                Some("time") => "time",
                _ => {
                    if is_date(s) {
                        "date"
                    } else if is_time(s) {
                        "time"
                    } else {
                        "dateTime"
                    }
                }
            };
            let text = match kind {
                "date" if is_date(s) => date(s, precision, high),
                "time" => time(s, precision, high),
                _ => date_time(s, precision, high),
            }?;
            Some(Item::Str(Cow::Owned(text), Some(kind)))
        }
    }
}

fn decimal(d: Decimal, precision: Option<i64>, high: bool) -> Option<Decimal> {
    let half = Decimal::half_ulp(d.scale())?;
    let b = if high { d.add(&half)? } else { d.sub(&half)? };
    match precision {
        None => Some(b),
        Some(p) if (0..=28).contains(&p) => b.round_to(u32::try_from(p).ok()?, high),
        Some(_) => None,
    }
}

fn is_leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Year, month and day of a (partial) date, filled in toward the boundary.
fn date_parts(s: &str, high: bool) -> Option<(u32, u32, u32)> {
    let mut it = s.split('-');
    let y: u32 = it.next()?.parse().ok()?;
    let m: u32 = match it.next() {
        Some(m) => m.parse().ok()?,
        None if high => 12,
        None => 1,
    };
    if !(1..=12).contains(&m) {
        return None;
    }
    let d: u32 = match it.next() {
        Some(d) => d.parse().ok()?,
        None if high => days_in_month(y, m),
        None => 1,
    };
    if d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some((y, m, d))
}

fn date(s: &str, precision: Option<i64>, high: bool) -> Option<String> {
    let (y, m, d) = date_parts(s, high)?;
    Some(match precision.unwrap_or(8) {
        4 => format!("{y:04}"),
        6 => format!("{y:04}-{m:02}"),
        8 => format!("{y:04}-{m:02}-{d:02}"),
        _ => return None,
    })
}

/// Hours, minutes, seconds and milliseconds of a (partial) time, filled in toward the boundary.
fn time_parts(s: &str, high: bool) -> Option<(u32, u32, u32, u32)> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let mut it = hms.split(':');
    let fill = |v: Option<&str>, max: u32| -> Option<u32> {
        match v {
            Some(x) => x.parse().ok(),
            None if high => Some(max),
            None => Some(0),
        }
    };
    let h = fill(it.next(), 23)?;
    let mi = fill(it.next(), 59)?;
    let sec = fill(it.next(), 59)?;
    let ms = match frac {
        Some(f) => {
            let mut digits: String = f.chars().take(3).collect();
            while digits.len() < 3 {
                digits.push(if high { '9' } else { '0' });
            }
            digits.parse().ok()?
        }
        None if high => 999,
        None => 0,
    };
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some((h, mi, sec, ms))
}

fn time(s: &str, precision: Option<i64>, high: bool) -> Option<String> {
    if !is_time(s) {
        return None;
    }
    let (h, m, sec, ms) = time_parts(s, high)?;
    Some(match precision.unwrap_or(9) {
        2 => format!("{h:02}"),
        4 => format!("{h:02}:{m:02}"),
        6 => format!("{h:02}:{m:02}:{sec:02}"),
        9 => format!("{h:02}:{m:02}:{sec:02}.{ms:03}"),
        _ => return None,
    })
}

fn date_time(s: &str, precision: Option<i64>, high: bool) -> Option<String> {
    let (date, time, zone) = split_date_time(s)?;
    let (y, mo, d) = date_parts(date, high)?;
    let (h, mi, sec, ms) = match time {
        Some(t) => time_parts(t, high)?,
        None if high => (23, 59, 59, 999),
        None => (0, 0, 0, 0),
    };
    // Without a zone the value could be in any: the earliest instant is at +14:00, the latest
    // at -12:00.
    let zone = zone.unwrap_or(if high { "-12:00" } else { "+14:00" });
    Some(match precision.unwrap_or(17) {
        4 => format!("{y:04}"),
        6 => format!("{y:04}-{mo:02}"),
        8 => format!("{y:04}-{mo:02}-{d:02}"),
        10 => format!("{y:04}-{mo:02}-{d:02}T{h:02}{zone}"),
        12 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}{zone}"),
        14 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}{zone}"),
        17 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}{zone}"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: Input<'_>, p: Option<i64>, high: bool) -> Option<String> {
        boundary(input, p, high).map(|it| match it {
            Item::Str(s, _) => s.into_owned(),
            Item::Dec(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }

    fn dec(s: &str) -> Input<'static> {
        Input::Decimal(Decimal::parse(s).unwrap())
    }

    #[test]
    fn decimals() {
        assert_eq!(text(dec("1.0"), None, false).unwrap(), "0.95");
        assert_eq!(text(dec("1.0"), None, true).unwrap(), "1.05");
        assert_eq!(text(dec("1.587"), None, false).unwrap(), "1.5865");
        assert_eq!(text(dec("1.587"), Some(6), false).unwrap(), "1.586500");
        assert_eq!(text(dec("1.587"), Some(2), false).unwrap(), "1.58");
        assert_eq!(text(dec("1.587"), Some(2), true).unwrap(), "1.59");
        assert_eq!(text(dec("-1.587"), Some(2), false).unwrap(), "-1.59");
        assert_eq!(text(dec("1"), None, true).unwrap(), "1.5");
        assert!(text(dec("1"), Some(40), true).is_none());
    }

    #[test]
    fn dates() {
        let t = |s, high| text(Input::Text(s, None), None, high).unwrap();
        assert_eq!(t("1970-06", false), "1970-06-01");
        assert_eq!(t("1970-06", true), "1970-06-30");
        assert_eq!(t("2000-02", true), "2000-02-29");
        assert_eq!(t("1900-02", true), "1900-02-28");
        assert_eq!(t("2014", true), "2014-12-31");
        assert_eq!(
            text(Input::Text("2014-06-15", None), Some(6), false).unwrap(),
            "2014-06"
        );
    }

    #[test]
    fn date_times() {
        let t = |s, high| text(Input::Text(s, Some("dateTime")), None, high).unwrap();
        assert_eq!(t("2010-10-10", false), "2010-10-10T00:00:00.000+14:00");
        assert_eq!(t("2010-10-10", true), "2010-10-10T23:59:59.999-12:00");
        assert_eq!(t("2010-10-10T10:30Z", true), "2010-10-10T10:30:59.999Z");
        assert_eq!(
            t("2015-02-07T13:28:17.2+02:00", true),
            "2015-02-07T13:28:17.299+02:00"
        );
        assert!(text(Input::Text("not a date", Some("dateTime")), None, true).is_none());
    }

    #[test]
    fn times() {
        let t = |s, high| text(Input::Text(s, Some("time")), None, high).unwrap();
        assert_eq!(t("12:34:00", false), "12:34:00.000");
        assert_eq!(t("12:34:00", true), "12:34:00.999");
        assert_eq!(t("12:34", true), "12:34:59.999");
        assert_eq!(t("12", false), "12:00:00.000");
    }
}
