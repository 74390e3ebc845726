//! Kick-off request parsing and validation (pure; no I/O).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::ExportLevel;
use crate::fhir::elements::ElementsFilter;
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::{is_patient_compartment_type, is_resource_type};
use crate::fhir::search::parse_query;

/// `_outputFormat` values we accept; all mean ndjson.
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// `includeAssociatedData` values (IG code system include-associated-data).
pub const LATEST_PROVENANCE: &str = "LatestProvenanceResources";
pub const RELEVANT_PROVENANCE: &str = "RelevantProvenanceResources";

/// Hints the IG lets a server ignore: accepted (strict handling included) and ignored.
/// `allowPartialManifests` (IG v3): this server always answers with one complete manifest.
const IGNORED_HINTS: &[&str] = &["allowPartialManifests"];

/// Bounds on what one kick-off may ask for (requests are parsed and stored, and a stored job is
/// read back by the exporter): more is a 400 even with `handling=lenient`.
pub const MAX_PARAMETERS: usize = 100;
/// Values of one list parameter (`_type`, `patient`, `_typeFilter` queries, `_elements`, …).
pub const MAX_VALUES: usize = 500;
/// Ignored items reported in error[] (more are summarised in one message).
pub const MAX_IGNORED_REPORTED: usize = 20;
/// The stored parameters of one job, serialised.
pub const MAX_STORED_PARAMS_BYTES: usize = 64 * 1024;

/// The one `organizeOutputBy` value supported: blocks of Patient compartments (IG v3).
pub const ORGANIZE_BY_PATIENT: &str = "Patient";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExportParams {
    /// `_type`: only these types (deduplicated, in request order). None: every type.
    #[serde(rename = "_type", skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// `_since`: only resources last updated after this instant.
    #[serde(rename = "_since", skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// `_until` (IG v3): the export is the data as it was at this instant (if earlier than the
    /// transaction time).
    #[serde(rename = "_until", default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(rename = "_outputFormat")]
    pub output_format: String,
    /// `patient`: only these patients' compartments (Patient and Group level).
    #[serde(rename = "patient", default, skip_serializing_if = "Option::is_none")]
    pub patients: Option<Vec<String>>,
    /// `_typeFilter`: FHIR search queries (`Type?query`, query URL-encoded), validated; the
    /// queries of one type are OR'd.
    #[serde(rename = "_typeFilter", default, skip_serializing_if = "Vec::is_empty")]
    pub type_filters: Vec<String>,
    /// `_elements`: top-level elements (`name` or `Type.name`) to keep.
    #[serde(rename = "_elements", default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<String>,
    /// `includeAssociatedData`: [`LATEST_PROVENANCE`] and/or [`RELEVANT_PROVENANCE`].
    #[serde(
        rename = "includeAssociatedData",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub include_associated_data: Vec<String>,
    /// `organizeOutputBy` (IG v3): `Patient` — files hold one block per patient (a header
    /// Parameters, the Patient, then its compartment) instead of one type per file.
    #[serde(
        rename = "organizeOutputBy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub organize_output_by: Option<String>,
    /// The types the client's access token allows (None: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_types: Option<Vec<String>>,
    /// With `Prefer: handling=lenient`: what was ignored, reported as OperationOutcomes in error[].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
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

/// What the `Prefer` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preferences {
    pub lenient: bool,
}

/// Checks the kick-off headers: `Accept: application/fhir+json` (absent, `*/*` and
/// `application/json` are tolerated) and `Prefer: respond-async` (parsed as a list, which may
/// also carry `handling=lenient`).
pub fn check_headers(
    accept: Option<&str>,
    prefer: Option<&str>,
) -> Result<Preferences, KickoffError> {
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
    let prefs: Vec<String> = prefer
        .unwrap_or("")
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase().replace(' ', ""))
        .collect();
    if !prefs.iter().any(|p| p == "respond-async") {
        return Err(KickoffError::InvalidHeader(
            "the Prefer header must include respond-async".into(),
        ));
    }
    Ok(Preferences {
        lenient: prefs.iter().any(|p| p == "handling=lenient"),
    })
}

/// Kick-off parameters in either form (GET query or POST `Parameters`), as (name, value) pairs.
/// A repeated parameter means one comma-joined value (IG). `additional_resources` tells which
/// non-compartment types a Patient or Group export can contain. With `lenient`, unknown or
/// unsupported parameters and types are ignored and listed in [`ExportParams::ignored`].
pub fn parse_params(
    level: ExportLevel,
    pairs: &[(String, String)],
    additional_resources: &[String],
    lenient: bool,
) -> Result<ExportParams, KickoffError> {
    let mut p = ExportParams::default();
    let mut ignored: Vec<String> = Vec::new();
    let mut distinct_ignored: std::collections::HashSet<String> = Default::default();
    if pairs.len() > MAX_PARAMETERS {
        return Err(KickoffError::InvalidParameter(format!(
            "{} parameters; at most {MAX_PARAMETERS} are accepted",
            pairs.len()
        )));
    }
    // Refuses, or with `lenient` records (once per distinct message, at most
    // MAX_IGNORED_REPORTED) and goes on.
    let mut refuse = |e: KickoffError| -> Result<(), KickoffError> {
        if lenient {
            let msg = format!("{e} (ignored: Prefer handling=lenient)");
            if ignored.len() < MAX_IGNORED_REPORTED && !distinct_ignored.contains(&msg) {
                ignored.push(msg.clone());
            }
            distinct_ignored.insert(msg);
            Ok(())
        } else {
            Err(e)
        }
    };
    let too_many = |name: &str| {
        KickoffError::InvalidParameter(format!(
            "{name}: more than {MAX_VALUES} values; split the export"
        ))
    };
    for (name, value) in pairs {
        if value.split(',').nth(MAX_VALUES).is_some() {
            return Err(too_many(name));
        }
        match name.as_str() {
            "_type" => {
                let list = p.types.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !is_resource_type(t) {
                        refuse(KickoffError::InvalidParameter(format!(
                            "_type: {t:?} is not a FHIR R4 resource type"
                        )))?;
                        continue;
                    }
                    if level != ExportLevel::System
                        && !is_patient_compartment_type(t)
                        && !additional_resources.iter().any(|a| a == t)
                    {
                        refuse(KickoffError::InvalidParameter(format!(
                            "_type: {t} is neither in the Patient compartment nor an AdditionalResources type, so a {} export cannot contain it",
                            level.as_str()
                        )))?;
                        continue;
                    }
                    if !list.iter().any(|x| x == t) {
                        list.push(t.to_string());
                    }
                }
            }
            "_since" => {
                if p.since.is_some() {
                    refuse(KickoffError::InvalidParameter(
                        "_since may be given only once".into(),
                    ))?;
                    continue;
                }
                match parse_instant(value) {
                    Ok(t) => p.since = Some(t),
                    Err(e) => refuse(KickoffError::InvalidParameter(format!("_since: {e}")))?,
                }
            }
            "_until" => {
                if p.until.is_some() {
                    refuse(KickoffError::InvalidParameter(
                        "_until may be given only once".into(),
                    ))?;
                    continue;
                }
                match parse_instant(value) {
                    Ok(t) => p.until = Some(t),
                    Err(e) => refuse(KickoffError::InvalidParameter(format!("_until: {e}")))?,
                }
            }
            "_outputFormat" => {
                let v = value.trim();
                if OUTPUT_FORMATS.contains(&v) {
                    p.output_format = v.to_string();
                } else {
                    refuse(KickoffError::InvalidParameter(format!(
                        "_outputFormat {v:?} is not supported; use one of {}",
                        OUTPUT_FORMATS.join(", ")
                    )))?;
                }
            }
            "patient" => {
                if level == ExportLevel::System {
                    refuse(KickoffError::InvalidParameter(
                        "patient is not allowed in a system-level export".into(),
                    ))?;
                    continue;
                }
                let list = p.patients.get_or_insert_with(Vec::new);
                for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    let id = r.strip_prefix("Patient/").unwrap_or(r);
                    if !is_fhir_id(id) {
                        refuse(KickoffError::InvalidParameter(format!(
                            "patient: {r:?} is not a Patient reference"
                        )))?;
                        continue;
                    }
                    if !list.iter().any(|x| x == id) {
                        list.push(id.to_string());
                    }
                }
            }
            "_typeFilter" => {
                // Repeats arrive comma-joined. A comma inside one query may arrive encoded
                // (%2C, smart-fetch) or not (bulk-data-client encodes each query whole, so
                // `Observation?category=a,b` arrives with a plain comma): a piece that does not
                // start a new `Type?…` query belongs to the one before it.
                for q in split_type_filters(value) {
                    let q = q.as_str();
                    match parse_query(q) {
                        Ok(_) => {
                            if !p.type_filters.iter().any(|x| x == q) {
                                p.type_filters.push(q.to_string());
                            }
                        }
                        Err(e) => refuse(KickoffError::InvalidParameter(e))?,
                    }
                }
            }
            "_elements" => {
                for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    match ElementsFilter::check(e) {
                        Ok(()) => {
                            if !p.elements.iter().any(|x| x == e) {
                                p.elements.push(e.to_string());
                            }
                        }
                        Err(e) => refuse(KickoffError::InvalidParameter(e))?,
                    }
                }
            }
            "includeAssociatedData" => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    if v == LATEST_PROVENANCE || v == RELEVANT_PROVENANCE {
                        if !p.include_associated_data.iter().any(|x| x == v) {
                            p.include_associated_data.push(v.to_string());
                        }
                    } else {
                        refuse(KickoffError::NotSupported(format!(
                            "includeAssociatedData {v:?} is not supported; use {LATEST_PROVENANCE} or {RELEVANT_PROVENANCE}"
                        )))?;
                    }
                }
            }
            "organizeOutputBy" => {
                let v = value.trim();
                if level == ExportLevel::System {
                    refuse(KickoffError::NotSupported(
                        "organizeOutputBy is supported at Patient and Group level, where blocks are Patient compartments".into(),
                    ))?;
                } else if v == ORGANIZE_BY_PATIENT {
                    p.organize_output_by = Some(ORGANIZE_BY_PATIENT.into());
                } else {
                    refuse(KickoffError::NotSupported(format!(
                        "organizeOutputBy {v:?} is not supported; use {ORGANIZE_BY_PATIENT}"
                    )))?;
                }
            }
            other if IGNORED_HINTS.contains(&other) => {}
            other => {
                refuse(KickoffError::InvalidParameter(format!(
                    "unknown parameter {other:?}"
                )))?;
            }
        }
    }
    if p.types.as_ref().is_some_and(|t| t.is_empty()) {
        if lenient && !ignored.is_empty() {
            // Every requested type was ignored: export what the level allows.
            p.types = None;
        } else {
            return Err(KickoffError::InvalidParameter(
                "_type must list at least one resource type".into(),
            ));
        }
    }
    if let (Some(since), Some(until)) = (p.since, p.until) {
        if until <= since {
            return Err(KickoffError::InvalidParameter(
                "_until must be later than _since".into(),
            ));
        }
    }
    if p.patients.as_ref().is_some_and(|l| l.is_empty()) {
        return Err(KickoffError::InvalidParameter(
            "patient must name at least one Patient".into(),
        ));
    }
    if p.output_format.is_empty() {
        p.output_format = OUTPUT_FORMATS[0].to_string();
    }
    for (name, n) in [
        ("_type", p.types.as_ref().map_or(0, Vec::len)),
        ("patient", p.patients.as_ref().map_or(0, Vec::len)),
        ("_typeFilter", p.type_filters.len()),
        ("_elements", p.elements.len()),
    ] {
        if n > MAX_VALUES {
            return Err(too_many(name));
        }
    }
    let ignored_more = distinct_ignored.len() - ignored.len();
    if ignored_more > 0 {
        ignored.push(format!(
            "{ignored_more} more ignored items not listed (ignored: Prefer handling=lenient)"
        ));
    }
    p.ignored = ignored;
    let stored = serde_json::to_vec(&p).map_or(usize::MAX, |v| v.len());
    if stored > MAX_STORED_PARAMS_BYTES {
        return Err(KickoffError::InvalidParameter(format!(
            "the export's parameters take {stored} bytes; at most {MAX_STORED_PARAMS_BYTES} are accepted"
        )));
    }
    Ok(p)
}

/// `_typeFilter` values split into queries: on commas, except that a piece which does not
/// start with `Type?` continues the query before it (its comma was part of a value list).
pub fn split_type_filters(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_query = piece
            .trim()
            .split_once('?')
            .is_some_and(|(t, _)| is_resource_type(t.trim()));
        match out.last_mut() {
            Some(last) if !starts_query => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out.into_iter()
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect()
}

/// The parameters of a POST kick-off body: a FHIR `Parameters` resource. Values may be given as
/// valueString, valueCode, valueInstant, valueDateTime, valueUri, valueId or valueReference.
pub fn parameters_body(body: &[u8]) -> Result<Vec<(String, String)>, KickoffError> {
    let bad = |m: String| KickoffError::InvalidParameter(m);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    if v.get("resourceType").and_then(|t| t.as_str()) != Some("Parameters") {
        return Err(bad("the body must be a FHIR Parameters resource".into()));
    }
    let mut out = Vec::new();
    let params = match v.get("parameter") {
        None => return Ok(out),
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => return Err(bad("Parameters.parameter must be an array".into())),
    };
    for param in params {
        let name = param
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| bad("a Parameters.parameter has no name".into()))?;
        let value = [
            "valueString",
            "valueCode",
            "valueInstant",
            "valueDateTime",
            "valueUri",
            "valueId",
        ]
        .iter()
        .find_map(|k| param.get(*k).and_then(|v| v.as_str()))
        .or_else(|| {
            param
                .get("valueReference")
                .and_then(|r| r.get("reference"))
                .and_then(|r| r.as_str())
        })
        .ok_or_else(|| bad(format!("parameter {name} has no supported value[x]")))?;
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
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
    fn a_comma_inside_a_type_filter_query_keeps_its_or_meaning() {
        assert_eq!(
            split_type_filters(
                "Observation?category=laboratory,vital-signs,Condition?clinical-status=active"
            ),
            vec![
                "Observation?category=laboratory,vital-signs",
                "Condition?clinical-status=active"
            ]
        );
        let p = parse_params(
            ExportLevel::System,
            &q(&[("_typeFilter", "Observation?category=laboratory,vital-signs")]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            p.type_filters,
            vec!["Observation?category=laboratory,vital-signs"]
        );
    }

    #[test]
    fn allow_partial_manifests_is_accepted_and_ignored_even_when_strict() {
        let p = parse_params(
            ExportLevel::System,
            &q(&[("allowPartialManifests", "true")]),
            &[],
            false,
        )
        .unwrap();
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn requests_are_bounded_and_ignored_items_reported_once() {
        let many = "A,".repeat(500_000);
        let e = parse_params(ExportLevel::System, &q(&[("_type", &many)]), &[], true);
        assert!(matches!(e, Err(KickoffError::InvalidParameter(m)) if m.contains("more than")));
        let pairs: Vec<(String, String)> = (0..=MAX_PARAMETERS)
            .map(|i| ("_type".to_string(), format!("X{i}")))
            .collect();
        assert!(parse_params(ExportLevel::System, &pairs, &[], true).is_err());
        // 400 unknown types, a few repeated: each distinct message once, at most 20 + a summary.
        let types: Vec<String> = (0..400).map(|i| format!("Nope{}", i % 300)).collect();
        let p = parse_params(
            ExportLevel::System,
            &q(&[("_type", &types.join(",")), ("_type", "Patient")]),
            &[],
            true,
        )
        .unwrap();
        assert_eq!(p.ignored.len(), MAX_IGNORED_REPORTED + 1);
        assert!(p.ignored.last().unwrap().starts_with("280 more"));
    }

    #[test]
    fn kickoff_accepts_all_three_output_format_aliases() {
        for f in OUTPUT_FORMATS {
            let p =
                parse_params(ExportLevel::System, &q(&[("_outputFormat", f)]), &[], false).unwrap();
            assert_eq!(p.output_format, *f);
        }
        assert!(parse_params(
            ExportLevel::System,
            &q(&[("_outputFormat", "text/csv")]),
            &[],
            false,
        )
        .is_err());
    }

    #[test]
    fn repeated_type_parameters_are_joined_and_deduplicated() {
        let p = parse_params(
            ExportLevel::System,
            &q(&[
                ("_type", "Patient,Observation"),
                ("_type", "Patient , Encounter"),
            ]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            p.types.unwrap(),
            vec!["Patient", "Observation", "Encounter"]
        );
    }

    #[test]
    fn kickoff_rejects_unknown_type() {
        let e = parse_params(
            ExportLevel::System,
            &q(&[("_type", "Patient,Foo")]),
            &[],
            false,
        )
        .unwrap_err();
        assert!(matches!(e, KickoffError::InvalidParameter(m) if m.contains("Foo")));
    }

    #[test]
    fn patient_level_rejects_types_it_cannot_export() {
        assert!(parse_params(
            ExportLevel::Patient,
            &q(&[("_type", "Practitioner")]),
            &additional(),
            false,
        )
        .is_err());
        assert!(parse_params(
            ExportLevel::Group,
            &q(&[("_type", "Device,Observation")]),
            &additional(),
            false,
        )
        .is_ok());
        assert!(parse_params(
            ExportLevel::System,
            &q(&[("_type", "Practitioner")]),
            &[],
            false
        )
        .is_ok());
    }

    #[test]
    fn since_must_be_an_instant() {
        let p = parse_params(
            ExportLevel::System,
            &q(&[("_since", "2020-01-01T00:00:00Z")]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(p.since.unwrap().to_rfc3339(), "2020-01-01T00:00:00+00:00");
        assert!(parse_params(
            ExportLevel::System,
            &q(&[("_since", "2020-01-01")]),
            &[],
            false
        )
        .is_err());
    }

    #[test]
    fn unknown_and_unsupported_parameters_are_refused() {
        assert!(matches!(
            parse_params(ExportLevel::System, &q(&[("_count", "10")]), &[], false),
            Err(KickoffError::InvalidParameter(_))
        ));
        assert!(matches!(
            parse_params(
                ExportLevel::System,
                &q(&[("organizeOutputBy", "Patient")]),
                &[],
                false
            ),
            Err(KickoffError::NotSupported(_))
        ));
        for (name, value) in [
            ("_typeFilter", "x"),
            ("_typeFilter", "Observation?_include=Observation:subject"),
            ("_typeFilter", "Observation?_sort=date"),
            ("_elements", "Patient.name.family"),
            ("_elements", "nonsense"),
        ] {
            assert!(
                matches!(
                    parse_params(ExportLevel::System, &q(&[(name, value)]), &[], false),
                    Err(KickoffError::InvalidParameter(_))
                ),
                "{name}={value}"
            );
        }
        assert!(matches!(
            parse_params(
                ExportLevel::System,
                &q(&[("includeAssociatedData", "_custom")]),
                &[],
                false
            ),
            Err(KickoffError::NotSupported(_))
        ));
        assert!(parse_params(ExportLevel::System, &q(&[("_type", "")]), &[], false).is_err());
    }

    #[test]
    fn until_is_an_instant_after_since() {
        let p = parse_params(
            ExportLevel::System,
            &q(&[
                ("_since", "2020-01-01T00:00:00Z"),
                ("_until", "2021-01-01T00:00:00Z"),
            ]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            p.until.map(|t| t.to_rfc3339()),
            Some("2021-01-01T00:00:00+00:00".into())
        );
        for until in ["2019-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2021-01-01"] {
            assert!(parse_params(
                ExportLevel::System,
                &q(&[("_since", "2020-01-01T00:00:00Z"), ("_until", until)]),
                &[],
                false,
            )
            .is_err());
        }
    }

    #[test]
    fn type_filter_elements_and_associated_data_are_kept_in_request_order() {
        let p = parse_params(
            ExportLevel::Patient,
            &q(&[
                (
                    "_typeFilter",
                    "Observation?category=laboratory,MedicationRequest?status=active",
                ),
                (
                    "_typeFilter",
                    "Observation?category=vital-signs%2Csocial-history",
                ),
                ("_elements", "id,Patient.name"),
                ("includeAssociatedData", "LatestProvenanceResources"),
            ]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            p.type_filters,
            [
                "Observation?category=laboratory",
                "MedicationRequest?status=active",
                "Observation?category=vital-signs%2Csocial-history"
            ]
        );
        assert_eq!(p.elements, ["id", "Patient.name"]);
        assert_eq!(p.include_associated_data, [LATEST_PROVENANCE]);
    }

    #[test]
    fn lenient_handling_ignores_and_reports_instead_of_refusing() {
        let p = parse_params(
            ExportLevel::System,
            &q(&[
                ("_type", "Patient,Foo"),
                ("_count", "5"),
                ("_typeFilter", "x"),
            ]),
            &[],
            true,
        )
        .unwrap();
        assert_eq!(p.types.unwrap(), vec!["Patient"]);
        assert_eq!(p.ignored.len(), 3);
        assert!(p.ignored[0].contains("Foo"));
        let all_ignored =
            parse_params(ExportLevel::System, &q(&[("_type", "Foo")]), &[], true).unwrap();
        assert_eq!(all_ignored.types, None);
    }

    #[test]
    fn patient_parameter_takes_references_or_ids_at_patient_and_group_level() {
        let p = parse_params(
            ExportLevel::Group,
            &q(&[("patient", "Patient/a,b"), ("patient", "Patient/a")]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(p.patients.unwrap(), vec!["a", "b"]);
        assert!(parse_params(
            ExportLevel::System,
            &q(&[("patient", "Patient/a")]),
            &[],
            false
        )
        .is_err());
        assert!(parse_params(
            ExportLevel::Patient,
            &q(&[("patient", "Patient/../x")]),
            &[],
            false
        )
        .is_err());
    }

    #[test]
    fn parameters_bodies_give_name_value_pairs() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Patient,Observation"},
            {"name":"_since","valueInstant":"2020-01-01T00:00:00Z"},
            {"name":"patient","valueReference":{"reference":"Patient/p1"}},
            {"name":"_outputFormat","valueString":"ndjson"}]}"#;
        let pairs = parameters_body(body).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[2], ("patient".to_string(), "Patient/p1".to_string()));
        assert!(parameters_body(b"{\"resourceType\":\"Patient\"}").is_err());
        assert!(parameters_body(b"not json").is_err());
        assert!(parameters_body(
            br#"{"resourceType":"Parameters","parameter":[{"name":"x","valueInteger":1}]}"#
        )
        .is_err());
        assert_eq!(parameters_body(b"").unwrap(), vec![]);
    }

    #[test]
    fn prefer_is_parsed_as_a_list() {
        assert!(
            check_headers(
                Some("application/fhir+json"),
                Some("respond-async, handling=lenient")
            )
            .unwrap()
            .lenient
        );
        assert!(!check_headers(None, Some("respond-async")).unwrap().lenient);
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
