//! Kick-off request parsing and validation (pure; no I/O).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fhir::resource_types::is_resource_type;

mod headers;
mod parse;
mod vocab;

pub use headers::{check_headers, Preferences};
pub use parse::parse_params;
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
