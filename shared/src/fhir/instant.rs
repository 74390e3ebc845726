//! FHIR `instant` values (`_since`, `transactionTime`, `meta.lastUpdated`).

use chrono::{DateTime, SecondsFormat, Utc};

/// A value that is not a FHIR instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a FHIR instant (expected e.g. 2024-01-31T12:00:00Z, with a time zone)")]
pub struct InvalidInstant(pub String);

/// Parses a FHIR instant: `YYYY-MM-DDThh:mm:ss(.sss)(Z|±hh:mm)`. A time zone is required.
pub fn parse_instant(value: &str) -> Result<DateTime<Utc>, InvalidInstant> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| InvalidInstant(value.to_string()))
}

/// Formats an instant the way FHIR servers usually do: UTC, milliseconds, `Z`.
pub fn format_instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An HTTP-date (RFC 7231 IMF-fixdate), for the Expires header.
pub fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instants_with_time_zones() {
        let t = parse_instant("2020-01-01T00:00:00+02:00").unwrap();
        assert_eq!(format_instant(&t), "2019-12-31T22:00:00.000Z");
        assert!(parse_instant("2020-01-01T00:00:00.123Z").is_ok());
    }

    #[test]
    fn rejects_dates_and_missing_time_zones() {
        assert!(parse_instant("2020-01-01").is_err());
        assert!(parse_instant("2020-01-01T00:00:00").is_err());
        assert!(parse_instant("yesterday").is_err());
    }

    #[test]
    fn http_date_is_imf_fixdate() {
        let t = parse_instant("2024-03-05T07:08:09Z").unwrap();
        assert_eq!(http_date(&t), "Tue, 05 Mar 2024 07:08:09 GMT");
    }
}
