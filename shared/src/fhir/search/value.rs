//! Value grammar: tokens, prefixes, decimals with their implicit precision, dates as ranges,
//! and the normalisation strings are compared in.

use super::SearchError;
use chrono::{DateTime, Months, NaiveDate, TimeDelta, Utc};
use unicode_normalization::UnicodeNormalization;

use super::syntax::{
    non_empty, split_escaped, unescape, Decimal, Modifier, Prefix, Range, SearchValue,
};
use crate::fhir::search_types::SearchParamKind;

pub(super) fn parse_value(
    kind: SearchParamKind,
    modifier: &Modifier,
    v: &str,
) -> Result<SearchValue, SearchError> {
    use SearchParamKind as K;
    if v.is_empty() {
        return Err(SearchError("empty value".into()));
    }
    Ok(match kind {
        K::Token if *modifier == Modifier::Text => SearchValue::Text(normalize(&unescape(v))),
        K::Token => match split_escaped(v, '|').as_slice() {
            [code] => SearchValue::Token {
                system: None,
                code: Some(unescape(code)),
            },
            [system, code] => SearchValue::Token {
                // `|code`: no system; `system|`: any code of the system.
                system: Some(unescape(system)),
                code: non_empty(code),
            },
            _ => {
                return Err(SearchError(format!(
                    "{v:?} is not a token ([system]|[code])"
                )))
            }
        },
        K::String if *modifier == Modifier::Exact => SearchValue::Text(unescape(v)),
        K::String => SearchValue::Text(normalize(&unescape(v))),
        K::Uri => SearchValue::Uri(unescape(v)),
        K::Reference => {
            let v = unescape(v);
            match modifier {
                Modifier::Type(t) if !v.contains('/') => SearchValue::Reference(format!("{t}/{v}")),
                _ => SearchValue::Reference(v),
            }
        }
        K::Date => {
            let (prefix, rest) = split_prefix(v);
            let range = parse_date_range(rest).ok_or_else(|| {
                format!("{v:?} is not a date (e.g. 2020, 2020-01-31, 2020-01-31T10:00:00Z)")
            })?;
            SearchValue::Date(prefix, range)
        }
        K::Number => {
            let (prefix, rest) = split_prefix(v);
            SearchValue::Number(
                prefix,
                parse_decimal(rest).ok_or_else(|| SearchError(format!("{v:?} is not a number")))?,
            )
        }
        K::Quantity => {
            let parts = split_escaped(v, '|');
            let (prefix, number) = split_prefix(&parts[0]);
            let number = parse_decimal(number).ok_or_else(|| {
                SearchError(format!(
                    "{v:?} is not a quantity ([prefix]number|system|code)"
                ))
            })?;
            let (system, code) = match parts.as_slice() {
                [_] => (None, None),
                [_, system, code] => (non_empty(system), non_empty(code)),
                _ => {
                    return Err(SearchError(format!(
                        "{v:?} is not a quantity ([prefix]number|system|code)"
                    )))
                }
            };
            SearchValue::Quantity {
                prefix,
                number,
                system,
                code,
            }
        }
        K::Composite | K::Special => return Err(SearchError("not supported".into())),
    })
}

pub(super) fn split_prefix(v: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (p, prefix) in prefixes {
        if let Some(rest) = v.strip_prefix(p) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, v)
}

pub(super) fn parse_decimal(v: &str) -> Option<Decimal> {
    let value: f64 = v.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // Implicit precision: half a unit of the last given digit (exponent forms are exact).
    let half = match (v.contains(['e', 'E']), v.split_once('.')) {
        (true, _) => 0.0,
        (false, Some((_, frac))) => 0.5 * 10f64.powi(-(frac.len() as i32)),
        (false, None) => 0.5,
    };
    Some(Decimal {
        value,
        low: value - half,
        high: value + half,
    })
}

/// The range a FHIR date, dateTime or instant covers: `2020` is the whole year, `2020-03` the
/// month, a time to the second its second (or millisecond). No time zone: UTC.
pub(super) fn parse_date_range(v: &str) -> Option<Range> {
    let v = v.trim();
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    let date = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let bytes = v.as_bytes();
    if v.len() == 4 && bytes.iter().all(u8::is_ascii_digit) {
        let y: i32 = v.parse().ok()?;
        let low = midnight(date(y, 1, 1)?)?;
        let high = midnight(date(y + 1, 1, 1)?)?;
        return Some(Range {
            low: ms(low),
            high: ms(high),
        });
    }
    if v.len() == 7 && bytes[4] == b'-' {
        let y: i32 = v[..4].parse().ok()?;
        let m: u32 = v[5..].parse().ok()?;
        let low = date(y, m, 1)?;
        let high = low.checked_add_months(Months::new(1))?;
        return Some(Range {
            low: ms(midnight(low)?),
            high: ms(midnight(high)?),
        });
    }
    if v.len() == 10 {
        let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?;
        let low = midnight(d)?;
        return Some(Range {
            low: ms(low),
            high: ms(low + TimeDelta::days(1)),
        });
    }
    if v.len() > 10 && bytes[10] == b'T' {
        let t = match DateTime::parse_from_rfc3339(v) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                let fmt = if v.len() == 16 {
                    "%Y-%m-%dT%H:%M"
                } else {
                    "%Y-%m-%dT%H:%M:%S%.f"
                };
                chrono::NaiveDateTime::parse_from_str(v, fmt)
                    .ok()?
                    .and_utc()
            }
        };
        let time = &v[11..];
        let unit = if time.len() >= 5 && !time[5..].starts_with(':') {
            60_000 // hh:mm
        } else if time.contains('.') {
            1
        } else {
            1000
        };
        let low = ms(t);
        return Some(Range {
            low,
            high: low + unit,
        });
    }
    None
}

/// Lower case without accents, for string matching.
pub(super) fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .flat_map(char::to_lowercase)
        .collect()
}
