//! The kick-off's (name, value) pairs read into [`ExportParams`], each parameter by a function
//! of its own; with `handling=lenient`, what cannot be used is ignored and reported.

use chrono::{DateTime, Utc};

use super::{
    is_fhir_id, split_type_filters, AssociatedData, ExportParams, KickoffError, OrganizeBy,
    OutputFormat, LATEST_PROVENANCE, MAX_IGNORED_REPORTED, MAX_PARAMETERS, MAX_STORED_PARAMS_BYTES,
    MAX_VALUES, ORGANIZE_BY_PATIENT, OUTPUT_FORMATS, RELEVANT_PROVENANCE,
};
use crate::export::job::ExportLevel;
use crate::fhir::elements::ElementsFilter;
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::{is_patient_compartment_type, is_resource_type};
use crate::fhir::search::parse_query;

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
    if pairs.len() > MAX_PARAMETERS {
        return Err(KickoffError::InvalidParameter(format!(
            "{} parameters; at most {MAX_PARAMETERS} are accepted",
            pairs.len()
        )));
    }
    let mut p = ExportParams::default();
    let mut refusals = Refusals::new(lenient);
    let kickoff = Kickoff {
        level,
        additional_resources,
    };
    for (name, value) in pairs {
        check_pair(name, value)?;
        read_parameter(&mut p, &kickoff, name, value, &mut refusals)?;
    }
    if p.types.as_ref().is_some_and(|t| t.is_empty()) {
        if lenient && refusals.any() {
            // Every requested type was ignored: export what the level allows.
            p.types = None;
        } else {
            return Err(KickoffError::InvalidParameter(
                "_type must list at least one resource type".into(),
            ));
        }
    }
    check_together(&p)?;
    p.ignored = refusals.into_messages();
    let stored = serde_json::to_vec(&p).map_or(usize::MAX, |v| v.len());
    if stored > MAX_STORED_PARAMS_BYTES {
        return Err(KickoffError::InvalidParameter(format!(
            "the export's parameters take {stored} bytes; at most {MAX_STORED_PARAMS_BYTES} are accepted"
        )));
    }
    Ok(p)
}

/// What a kick-off's parameters are read against.
struct Kickoff<'a> {
    level: ExportLevel,
    /// The non-compartment types a Patient or Group export can contain.
    additional_resources: &'a [String],
}

/// What a kick-off refused: with `lenient`, recorded (each distinct message once, the first
/// [`MAX_IGNORED_REPORTED`] listed) instead of refused.
struct Refusals {
    lenient: bool,
    listed: Vec<String>,
    distinct: std::collections::HashSet<String>,
}

impl Refusals {
    fn new(lenient: bool) -> Self {
        Refusals {
            lenient,
            listed: Vec::new(),
            distinct: Default::default(),
        }
    }

    /// Refuses, or with `lenient` records and goes on.
    fn refuse(&mut self, e: KickoffError) -> Result<(), KickoffError> {
        if !self.lenient {
            return Err(e);
        }
        let msg = format!("{e} (ignored: Prefer handling=lenient)");
        if self.listed.len() < MAX_IGNORED_REPORTED && !self.distinct.contains(&msg) {
            self.listed.push(msg.clone());
        }
        self.distinct.insert(msg);
        Ok(())
    }

    /// Whether anything was ignored.
    fn any(&self) -> bool {
        !self.distinct.is_empty()
    }

    /// The ignored items' messages ([`ExportParams::ignored`]), then how many more there were.
    fn into_messages(self) -> Vec<String> {
        let mut listed = self.listed;
        let more = self.distinct.len() - listed.len();
        if more > 0 {
            listed.push(format!(
                "{more} more ignored items not listed (ignored: Prefer handling=lenient)"
            ));
        }
        listed
    }
}

fn too_many_values(name: &str) -> KickoffError {
    KickoffError::InvalidParameter(format!(
        "{name}: more than {MAX_VALUES} values; split the export"
    ))
}

/// What no parameter may be, even when lenient: text with a NUL, or a list of more than
/// [`MAX_VALUES`] values.
fn check_pair(name: &str, value: &str) -> Result<(), KickoffError> {
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
        return Err(too_many_values(name));
    }
    Ok(())
}

/// Adds one parameter to `p`, or refuses it.
fn read_parameter(
    p: &mut ExportParams,
    kickoff: &Kickoff<'_>,
    name: &str,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    match name {
        "_type" => read_types(p, kickoff, value, refusals),
        "_since" => read_instant(&mut p.since, name, value, refusals),
        "_until" => read_instant(&mut p.until, name, value, refusals),
        "_outputFormat" => {
            let v = value.trim();
            match OutputFormat::parse(v) {
                Some(format) => {
                    p.output_format = format;
                    Ok(())
                }
                None => refusals.refuse(KickoffError::InvalidParameter(format!(
                    "_outputFormat {v:?} is not supported; use one of {}",
                    OUTPUT_FORMATS.join(", ")
                ))),
            }
        }
        "patient" => read_patients(p, kickoff.level, value, refusals),
        "_typeFilter" => read_type_filters(p, value, refusals),
        "_elements" => read_elements(p, value, refusals),
        "includeAssociatedData" => read_associated_data(p, value, refusals),
        "organizeOutputBy" => read_organize_by(p, kickoff.level, value, refusals),
        "allowPartialManifests" => {
            // IG v3, a hint the IG lets a server ignore (strict handling included): this
            // server always answers with one complete manifest. Its value is a boolean.
            if matches!(value.trim(), "true" | "false") {
                Ok(())
            } else {
                refusals.refuse(KickoffError::InvalidParameter(format!(
                    "allowPartialManifests is a boolean (true or false), not {value:?}"
                )))
            }
        }
        other => refusals.refuse(KickoffError::InvalidParameter(format!(
            "unknown parameter {other:?}"
        ))),
    }
}

/// `_type`: resource types the level can export, added once each.
fn read_types(
    p: &mut ExportParams,
    kickoff: &Kickoff<'_>,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    let list = p.types.get_or_insert_with(Vec::new);
    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !is_resource_type(t) {
            refusals.refuse(KickoffError::InvalidParameter(format!(
                "_type: {t:?} is not a FHIR R4 resource type"
            )))?;
            continue;
        }
        if kickoff.level != ExportLevel::System
            && !is_patient_compartment_type(t)
            && !kickoff.additional_resources.iter().any(|a| a == t)
        {
            refusals.refuse(KickoffError::InvalidParameter(format!(
                "_type: {t} is neither in the Patient compartment nor an AdditionalResources type, so a {} export cannot contain it",
                kickoff.level.as_str()
            )))?;
            continue;
        }
        if !list.iter().any(|x| x == t) {
            list.push(t.to_string());
        }
    }
    Ok(())
}

/// `_since` or `_until` (`name`): an instant, given once.
fn read_instant(
    slot: &mut Option<DateTime<Utc>>,
    name: &str,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    if slot.is_some() {
        return refusals.refuse(KickoffError::InvalidParameter(format!(
            "{name} may be given only once"
        )));
    }
    match parse_instant(value) {
        Ok(t) => {
            *slot = Some(t);
            Ok(())
        }
        Err(e) => refusals.refuse(KickoffError::InvalidParameter(format!("{name}: {e}"))),
    }
}

/// `patient`: Patient references (Patient and Group level), their ids added once each.
fn read_patients(
    p: &mut ExportParams,
    level: ExportLevel,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    if level == ExportLevel::System {
        return refusals.refuse(KickoffError::InvalidParameter(
            "patient is not allowed in a system-level export".into(),
        ));
    }
    let list = p.patients.get_or_insert_with(Vec::new);
    for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let id = r.strip_prefix("Patient/").unwrap_or(r);
        if !is_fhir_id(id) {
            refusals.refuse(KickoffError::InvalidParameter(format!(
                "patient: {r:?} is not a Patient reference"
            )))?;
            continue;
        }
        if !list.iter().any(|x| x == id) {
            list.push(id.to_string());
        }
    }
    Ok(())
}

/// `_typeFilter`: search queries that parse, added once each.
fn read_type_filters(
    p: &mut ExportParams,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
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
            Err(e) => refusals.refuse(KickoffError::InvalidParameter(e.0))?,
        }
    }
    Ok(())
}

/// `_elements`: element names, added once each.
fn read_elements(
    p: &mut ExportParams,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match ElementsFilter::check(e) {
            Ok(()) => {
                if !p.elements.iter().any(|x| x == e) {
                    p.elements.push(e.to_string());
                }
            }
            Err(e) => refusals.refuse(KickoffError::InvalidParameter(e.0))?,
        }
    }
    Ok(())
}

/// `includeAssociatedData`: the supported values, added once each.
fn read_associated_data(
    p: &mut ExportParams,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        if let Some(data) = AssociatedData::parse(v) {
            if !p.include_associated_data.contains(&data) {
                p.include_associated_data.push(data);
            }
        } else {
            refusals.refuse(KickoffError::NotSupported(format!(
                "includeAssociatedData {v:?} is not supported; use {LATEST_PROVENANCE} or {RELEVANT_PROVENANCE}"
            )))?;
        }
    }
    Ok(())
}

/// `organizeOutputBy`: `Patient`, at Patient and Group level.
fn read_organize_by(
    p: &mut ExportParams,
    level: ExportLevel,
    value: &str,
    refusals: &mut Refusals,
) -> Result<(), KickoffError> {
    let v = value.trim();
    if level == ExportLevel::System {
        refusals.refuse(KickoffError::NotSupported(
            "organizeOutputBy is supported at Patient and Group level, where blocks are Patient compartments".into(),
        ))
    } else if v == ORGANIZE_BY_PATIENT {
        p.organize_output_by = Some(OrganizeBy::Patient);
        Ok(())
    } else {
        refusals.refuse(KickoffError::NotSupported(format!(
            "organizeOutputBy {v:?} is not supported; use {ORGANIZE_BY_PATIENT}"
        )))
    }
}

/// What the parameters must be together: `_until` after `_since`, a `patient` list that names
/// someone, at most [`MAX_VALUES`] values of each list once joined.
fn check_together(p: &ExportParams) -> Result<(), KickoffError> {
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
            return Err(too_many_values(name));
        }
    }
    Ok(())
}
