//! Kick-off request parsing and validation (pure; no I/O).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::ExportLevel;
use crate::fhir::elements::ElementsFilter;
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::{is_patient_compartment_type, is_resource_type};
use crate::fhir::search::parse_query;

mod headers;
mod vocab;

pub use headers::{check_headers, Preferences};
pub use vocab::*;

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
    pub output_format: OutputFormat,
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
    /// `includeAssociatedData`.
    #[serde(
        rename = "includeAssociatedData",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub include_associated_data: Vec<AssociatedData>,
    /// `organizeOutputBy` (IG v3): `Patient` — files hold one block per patient (a header
    /// Parameters, the Patient, then its compartment) instead of one type per file.
    #[serde(
        rename = "organizeOutputBy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub organize_output_by: Option<OrganizeBy>,
    /// The types the client's access token allows (None: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_types: Option<Vec<String>>,
    /// With `Prefer: handling=lenient`: what was ignored, reported as OperationOutcomes in error[].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// `$viewdefinition-export`: the views whose rows the files hold instead of resources
    /// (`_type` is their resource types). Empty for `$export`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<NamedView>,
    /// `$viewdefinition-export`: the files' format.
    #[serde(
        rename = "viewFormat",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub view_format: Option<ViewFormat>,
    /// `$viewdefinition-export`'s `clientTrackingId`, echoed in the manifest.
    #[serde(
        rename = "clientTrackingId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_tracking_id: Option<String>,
}

/// A view of a `$viewdefinition-export`: its output name (unique in the job; the files'
/// manifest `type`) and its ViewDefinition, validated at kick-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedView {
    pub name: String,
    pub definition: serde_json::Value,
}

/// The `_format` of a `$viewdefinition-export` (`ndjson`, `csv` or `parquet`), and for CSV
/// whether the files start with a header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewFormat {
    pub code: String,
    #[serde(default)]
    pub header: bool,
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
        // Text is stored (Postgres text and jsonb refuse U+0000) and no parameter can mean
        // anything with a NUL: a 400 naming the parameter, even when lenient (an ignored
        // parameter's name is stored in error[] too).
        if name.contains('\0') || value.contains('\0') {
            return Err(KickoffError::InvalidParameter(format!(
                "{}: a NUL character (%00) is not allowed in a parameter's name or value",
                name.escape_debug()
            )));
        }
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
                if let Some(format) = OutputFormat::parse(v) {
                    p.output_format = format;
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
                        Err(e) => refuse(KickoffError::InvalidParameter(e.0))?,
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
                        Err(e) => refuse(KickoffError::InvalidParameter(e.0))?,
                    }
                }
            }
            "includeAssociatedData" => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    if let Some(data) = AssociatedData::parse(v) {
                        if !p.include_associated_data.contains(&data) {
                            p.include_associated_data.push(data);
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
                    p.organize_output_by = Some(OrganizeBy::Patient);
                } else {
                    refuse(KickoffError::NotSupported(format!(
                        "organizeOutputBy {v:?} is not supported; use {ORGANIZE_BY_PATIENT}"
                    )))?;
                }
            }
            "allowPartialManifests" => {
                // IG v3, a hint the IG lets a server ignore (strict handling included): this
                // server always answers with one complete manifest. Its value is a boolean.
                if !matches!(value.trim(), "true" | "false") {
                    refuse(KickoffError::InvalidParameter(format!(
                        "allowPartialManifests is a boolean (true or false), not {value:?}"
                    )))?;
                }
            }
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

/// The value[x] the Bulk Data IG's OperationDefinitions (`export`, `patient-export`,
/// `group-export`, v2.0.0 and v3) give each kick-off parameter.
pub const IG_VALUE_TYPES: &[(&str, &str)] = &[
    ("_outputFormat", "valueString"),
    ("_since", "valueInstant"),
    ("_until", "valueInstant"),
    ("_type", "valueString"),
    ("_elements", "valueString"),
    ("patient", "valueReference"),
    ("includeAssociatedData", "valueCode"),
    ("_typeFilter", "valueString"),
    ("organizeOutputBy", "valueString"),
    ("allowPartialManifests", "valueBoolean"),
];

/// Text value[x] taken for any parameter besides the IG's type (clients write a `_since` as
/// valueDateTime or a `_type` as valueCode): the text is what is checked.
pub const TEXT_VALUE_TYPES: &[&str] = &[
    "valueString",
    "valueCode",
    "valueInstant",
    "valueDateTime",
    "valueUri",
    "valueId",
];

/// The parameters of a POST kick-off body: a FHIR `Parameters` resource. Each parameter's value
/// is its IG type ([`IG_VALUE_TYPES`]: valueString, valueInstant, valueCode, valueReference,
/// valueBoolean) or another text value[x] (valueDateTime, valueUri, valueId); a valueBoolean is
/// the text `true` or `false`.
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
        let value = TEXT_VALUE_TYPES
            .iter()
            .find_map(|k| param.get(*k).and_then(|v| v.as_str()))
            .map(str::to_string)
            .or_else(|| {
                param
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            })
            .or_else(|| {
                param
                    .get("valueBoolean")
                    .and_then(|b| b.as_bool())
                    .map(|b| b.to_string())
            })
            .ok_or_else(|| {
                let ig = IG_VALUE_TYPES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(String::new(), |(_, t)| format!(" (the IG's type for it is {t})"));
                bad(format!(
                    "parameter {name:?} has no supported value[x]{ig}; use {}, valueReference or valueBoolean",
                    TEXT_VALUE_TYPES.join(", ")
                ))
            })?;
        out.push((name.to_string(), value));
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
mod tests;
