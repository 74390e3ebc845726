//! Kick-off request parsing and validation (pure; no I/O).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::ExportLevel;
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::{is_patient_compartment_type, is_resource_type};

/// `_outputFormat` values we accept; all mean ndjson.
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Parameters recognised by the IG that this server does not support yet.
const NOT_YET_SUPPORTED: &[&str] = &[
    "_elements",
    "patient",
    "_typeFilter",
    "includeAssociatedData",
    "_until",
    "organizeOutputBy",
    "allowPartialManifests",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExportParams {
    /// `_type`: only these types (deduplicated, in request order). None: every type.
    #[serde(rename = "_type", skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// `_since`: only resources last updated after this instant.
    #[serde(rename = "_since", skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(rename = "_outputFormat")]
    pub output_format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KickoffError {
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    InvalidHeader(String),
    #[error("{0}")]
    NotAcceptable(String),
}

/// Checks the kick-off headers: `Accept: application/fhir+json` (absent, `*/*` and
/// `application/json` are tolerated) and `Prefer: respond-async` (parsed as a list).
pub fn check_headers(accept: Option<&str>, prefer: Option<&str>) -> Result<(), KickoffError> {
    if let Some(accept) = accept {
        let ok = accept.split(',').any(|a| {
            let media = a.split(';').next().unwrap_or("").trim();
            matches!(
                media,
                "application/fhir+json" | "application/json" | "*/*" | "application/*" | ""
            )
        });
        if !ok {
            return Err(KickoffError::NotAcceptable(format!(
                "Accept {accept:?} is not supported: the kick-off response is application/fhir+json"
            )));
        }
    }
    let respond_async = prefer.is_some_and(|p| {
        p.split(',')
            .any(|pref| pref.trim().eq_ignore_ascii_case("respond-async"))
    });
    if !respond_async {
        return Err(KickoffError::InvalidHeader(
            "the Prefer header must include respond-async".into(),
        ));
    }
    Ok(())
}

/// Parses the kick-off query. A repeated parameter is one comma-joined value (IG).
/// `exportable` tells which types the level can export (Patient/Group level: compartment types
/// and AdditionalResources).
pub fn parse_query(
    level: ExportLevel,
    query: &[(String, String)],
    additional_resources: &[String],
) -> Result<ExportParams, KickoffError> {
    let mut types: Option<Vec<String>> = None;
    let mut since = None;
    let mut output_format = None;
    for (name, value) in query {
        match name.as_str() {
            "_type" => {
                let list = types.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !is_resource_type(t) {
                        return Err(KickoffError::InvalidParameter(format!(
                            "_type: {t:?} is not a FHIR R4 resource type"
                        )));
                    }
                    if level != ExportLevel::System
                        && !is_patient_compartment_type(t)
                        && !additional_resources.iter().any(|a| a == t)
                    {
                        return Err(KickoffError::InvalidParameter(format!(
                            "_type: {t} is neither in the Patient compartment nor an AdditionalResources type, so a {} export cannot contain it",
                            level.as_str()
                        )));
                    }
                    if !list.iter().any(|x| x == t) {
                        list.push(t.to_string());
                    }
                }
            }
            "_since" => {
                if since.is_some() {
                    return Err(KickoffError::InvalidParameter(
                        "_since may be given only once".into(),
                    ));
                }
                since = Some(
                    parse_instant(value)
                        .map_err(|e| KickoffError::InvalidParameter(format!("_since: {e}")))?,
                );
            }
            "_outputFormat" => {
                let v = value.trim();
                if !OUTPUT_FORMATS.contains(&v) {
                    return Err(KickoffError::InvalidParameter(format!(
                        "_outputFormat {v:?} is not supported; use one of {}",
                        OUTPUT_FORMATS.join(", ")
                    )));
                }
                output_format = Some(v.to_string());
            }
            other if NOT_YET_SUPPORTED.contains(&other) => {
                return Err(KickoffError::NotSupported(format!(
                    "parameter {other} is not supported by this server"
                )));
            }
            other => {
                return Err(KickoffError::InvalidParameter(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    if types.as_ref().is_some_and(|t| t.is_empty()) {
        return Err(KickoffError::InvalidParameter(
            "_type must list at least one resource type".into(),
        ));
    }
    Ok(ExportParams {
        types,
        since,
        output_format: output_format.unwrap_or_else(|| OUTPUT_FORMATS[0].to_string()),
    })
}

/// A FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn additional() -> Vec<String> {
        vec!["Organization".into(), "Device".into()]
    }

    #[test]
    fn kickoff_accepts_all_three_output_format_aliases() {
        for f in OUTPUT_FORMATS {
            let p = parse_query(ExportLevel::System, &q(&[("_outputFormat", f)]), &[]).unwrap();
            assert_eq!(p.output_format, *f);
        }
        assert!(parse_query(
            ExportLevel::System,
            &q(&[("_outputFormat", "text/csv")]),
            &[]
        )
        .is_err());
    }

    #[test]
    fn repeated_type_parameters_are_joined_and_deduplicated() {
        let p = parse_query(
            ExportLevel::System,
            &q(&[
                ("_type", "Patient,Observation"),
                ("_type", "Patient , Encounter"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            p.types.unwrap(),
            vec!["Patient", "Observation", "Encounter"]
        );
    }

    #[test]
    fn kickoff_rejects_unknown_type() {
        let e = parse_query(ExportLevel::System, &q(&[("_type", "Patient,Foo")]), &[]).unwrap_err();
        assert!(matches!(e, KickoffError::InvalidParameter(m) if m.contains("Foo")));
    }

    #[test]
    fn patient_level_rejects_types_it_cannot_export() {
        assert!(parse_query(
            ExportLevel::Patient,
            &q(&[("_type", "Practitioner")]),
            &additional()
        )
        .is_err());
        assert!(parse_query(
            ExportLevel::Group,
            &q(&[("_type", "Device,Observation")]),
            &additional()
        )
        .is_ok());
        assert!(parse_query(ExportLevel::System, &q(&[("_type", "Practitioner")]), &[]).is_ok());
    }

    #[test]
    fn since_must_be_an_instant() {
        let p = parse_query(
            ExportLevel::System,
            &q(&[("_since", "2020-01-01T00:00:00Z")]),
            &[],
        )
        .unwrap();
        assert_eq!(p.since.unwrap().to_rfc3339(), "2020-01-01T00:00:00+00:00");
        assert!(parse_query(ExportLevel::System, &q(&[("_since", "2020-01-01")]), &[]).is_err());
    }

    #[test]
    fn unknown_and_unsupported_parameters_are_refused() {
        assert!(matches!(
            parse_query(ExportLevel::System, &q(&[("_count", "10")]), &[]),
            Err(KickoffError::InvalidParameter(_))
        ));
        assert!(matches!(
            parse_query(ExportLevel::System, &q(&[("_typeFilter", "x")]), &[]),
            Err(KickoffError::NotSupported(_))
        ));
        assert!(parse_query(ExportLevel::System, &q(&[("_type", "")]), &[]).is_err());
    }

    #[test]
    fn prefer_is_parsed_as_a_list() {
        assert!(check_headers(
            Some("application/fhir+json"),
            Some("respond-async, handling=lenient")
        )
        .is_ok());
        assert!(check_headers(None, Some("handling=lenient,respond-async")).is_ok());
        assert!(matches!(
            check_headers(Some("application/fhir+json"), None),
            Err(KickoffError::InvalidHeader(_))
        ));
        assert!(matches!(
            check_headers(Some("text/html"), Some("respond-async")),
            Err(KickoffError::NotAcceptable(_))
        ));
    }

    #[test]
    fn fhir_ids_are_validated() {
        assert!(is_fhir_id("d9f31445-f448-48c0-af57-295c005e07df"));
        assert!(!is_fhir_id("../x"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }
}
