//! `GET [base]/metadata`: a CapabilityStatement that instantiates the Bulk Data one.

use serde_json::{json, Value};

use crate::config::Config;
use crate::fhir::compartment_table::R4_RESOURCE_TYPES;
use crate::fhir::search_types::search_params;

/// What `_typeFilter` supports, for the CapabilityStatement, the OperationDefinitions and README.
pub const ORGANIZE_BY_DOC: &str = "Supported value Patient (Patient and Group level): files of blocks, one per patient in id order, each a Parameters header (parameter header = Reference to the Patient), the Patient, then its compartment resources, the AdditionalResources they reference and the Provenance that targets them, by type and id; a block is never split across files; manifest entries have no type or count, and the manifest says outputOrganizedBy Patient. Other values, and system level, are a 400.";

pub const TYPE_FILTER_DOC: &str = "Supported: FHIR search queries `Type?name=value&…` (URL-encoded; repeats and comma-separated queries are OR'd, parameters in one query AND'd, comma-separated values OR'd; a comma inside one query is sent as %2C). Every search parameter listed under rest.resource.searchParam can be used: the R4 parameters of type token (:not, :text), reference (Type/id, id, :[Type]), date (eq ne gt lt ge le sa eb ap; partial dates are ranges), string (prefix, case and accent insensitive; :exact, :contains), quantity ([prefix]number|system|code), uri (:below, :above) and number, plus _id, _lastUpdated, _tag, _profile, _security, _source; :missing on all. Refused with 400 (or ignored and reported with handling=lenient): _include, _revinclude, _sort, _count, _elements and other result parameters, chained and _has parameters, composite and special parameters. A filter on a type the export does not contain has no effect. deleted[] lists the deletions of a filtered type whose last content matched the filter.";

pub fn capability_statement(base: &str, config: &Config) -> Value {
    let export_op = |name: &str, def: &str| json!({"name": name, "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{def}")});
    // Every type, with the search parameters `_typeFilter` can use on it (`_lastUpdated` among
    // them tells clients such as smart-fetch that `_since` filters on last update).
    let resources: Vec<Value> = R4_RESOURCE_TYPES
        .iter()
        .map(|t| {
            let params: Vec<Value> = search_params(t)
                .filter(|p| p.supported())
                .map(|p| json!({"name": p.code, "type": p.kind.as_str()}))
                .collect();
            let mut r = json!({"type": t, "searchParam": params});
            match *t {
                "Patient" => r["operation"] = json!([export_op("export", "patient-export")]),
                "Group" => {
                    r["operation"] = json!([export_op("export", "group-export")]);
                    r["documentation"] = json!("Group.member references to Patient define the patients; other Groups are never exported by a Group export.");
                }
                _ => {}
            }
            r
        })
        .collect();
    let mut cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "fhir-bulk-export", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "FHIR Bulk Data export", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Bulk Data export (IG v2.0.0), kick-off by GET or POST (Parameters). Parameters: _type, _since, _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), patient (Patient and Group level), _typeFilter, _elements, includeAssociatedData (LatestProvenanceResources, RelevantProvenanceResources), _until and organizeOutputBy=Patient (IG v3; Patient and Group level: {ORGANIZE_BY_DOC}); allowPartialManifests is not supported. Prefer: handling=lenient ignores unsupported parameters and reports them in error[]. _since exports list deletions in deleted[]. Patient and Group exports contain the R4 Patient compartment plus referenced {} and the Provenance whose target is an exported resource. A Group export covers the patients in Group.member at the time of the export, with all of their data that matches _since (membership history is not kept). _elements keeps the listed top-level elements (`name` for every type, `Type.name` for one) plus id, meta and required elements, and tags the resource SUBSETTED. _typeFilter: {TYPE_FILTER_DOC} Over-polling a status URL gets 429.",
                config.additional_resources.join(", ")
            ),
            "resource": resources,
            "operation": [
                export_op("export", "export"),
                {"name": "viewdefinition-export", "definition": format!("{base}/OperationDefinition/viewdefinition-export")},
                {"name": "viewdefinition-run", "definition": format!("{base}/OperationDefinition/viewdefinition-run")}
            ]
        }]
    });
    if config.auth.is_on() {
        cs["rest"][0]["security"] = json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": format!("{base}{}", crate::auth::TOKEN_PATH)}]
            }],
            "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }]}],
            "description": "SMART Backend Services (client_credentials, private_key_jwt with RS384 or ES384); scopes system/*.read or system/<Type>.read (v1) and .rs (v2). See .well-known/smart-configuration."
        });
    }
    cs
}

/// `[base]/OperationDefinition/{id}`: the id when the path names one of ours.
/// The Bulk Data IG v2.0.0 OperationDefinitions (`export`, `patient-export`, `group-export`),
/// with what this server supports said in each parameter's documentation.
pub fn operation_definition(id: &str) -> Option<Value> {
    if let Some(def) = view_operation_definition(id) {
        return Some(def);
    }
    let (name, title, resource, system, type_level, instance) = match id {
        "export" => (
            "BulkDataExport",
            "FHIR Bulk Data System Level Export",
            None,
            true,
            false,
            false,
        ),
        "patient-export" => (
            "PatientLevelExport",
            "FHIR Bulk Data Patient Level Export",
            Some("Patient"),
            false,
            true,
            false,
        ),
        "group-export" => (
            "GroupLevelExport",
            "FHIR Bulk Data Group Level Export",
            Some("Group"),
            false,
            false,
            true,
        ),
        _ => return None,
    };
    let param = |name: &str, max: &str, ty: &str, doc: &str| json!({"name": name, "use": "in", "min": 0, "max": max, "type": ty, "documentation": doc});
    let mut parameters = vec![
        param("_outputFormat", "1", "string", "Supported: application/fhir+ndjson (default), application/ndjson, ndjson."),
        param("_since", "1", "instant", "Supported: resources last updated after this instant; deletions since then are listed in deleted[]."),
        param("_type", "*", "string", "Supported: comma-separated resource types; repeats are joined."),
        param("_until", "1", "instant", "Supported (IG v3): the data as it was at this instant (the versions current then), if earlier than transactionTime; must be later than _since."),
        param("_elements", "*", "string", "Supported: top-level elements, `name` (every type) or `Type.name` (that type); id, meta and required elements are kept; subsetted resources are tagged SUBSETTED. Unknown elements are a 400."),
        param("includeAssociatedData", "*", "code", "Supported: LatestProvenanceResources (only the newest Provenance, by recorded, of each exported resource) and RelevantProvenanceResources (every Provenance whose target is exported); Patient and Group exports include the latter by default. Custom values are a 400."),
        param("_typeFilter", "*", "string", TYPE_FILTER_DOC),
    ];
    if resource.is_some() {
        parameters.push(param(
            "patient",
            "*",
            "Reference",
            "Supported (POST Parameters or GET): only these patients; unknown patients or ones outside the Group are a 400.",
        ));
        parameters.push(param("organizeOutputBy", "1", "string", ORGANIZE_BY_DOC));
    }
    let mut def = json!({
        "resourceType": "OperationDefinition",
        "id": id,
        "url": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{id}"),
        "version": "2.0.0",
        "name": name,
        "title": title,
        "status": "active",
        "kind": "operation",
        "affectsState": false,
        "code": "export",
        "system": system,
        "type": type_level,
        "instance": instance,
        "parameter": parameters,
    });
    if let Some(r) = resource {
        def["resource"] = json!([r]);
    }
    Some(def)
}

/// SQL on FHIR v2's `$viewdefinition-export` and `$viewdefinition-run`, as this server takes
/// them (ids `viewdefinition-export`, `viewdefinition-run`).
fn view_operation_definition(id: &str) -> Option<Value> {
    let param = |name: &str, min: u32, max: &str, ty: Option<&str>, doc: &str| {
        let mut p =
            json!({"name": name, "use": "in", "min": min, "max": max, "documentation": doc});
        if let Some(t) = ty {
            p["type"] = json!(t);
        }
        p
    };
    let view_resource = "A ViewDefinition, inline. Validated when the request arrives: an unknown function, a bad path or a type error is a 400 naming the element.";
    let view_reference = "ViewDefinition/<id> (or a URL ending so) of a ViewDefinition loaded with `bulk-export load`; an unknown one is a 400.";
    let format_doc = "ndjson (default for the export), csv or parquet; media types are accepted too (application/x-ndjson, text/csv, application/vnd.apache.parquet).";
    let (name, title, code, parameters) = match id {
        "viewdefinition-export" => (
            "ViewDefinitionExport",
            "SQL on FHIR ViewDefinition Export",
            "viewdefinition-export",
            vec![
                json!({"name": "view", "use": "in", "min": 1, "max": "*", "documentation": "One output per view: its files hold the view's rows.", "part": [
                    param("name", 0, "1", Some("string"), "The output's name (a letter, then letters, digits or _): the manifest's type and the files' names. Default: ViewDefinition.name."),
                    param("viewResource", 0, "1", Some("Resource"), view_resource),
                    param("viewReference", 0, "1", Some("Reference"), view_reference),
                ]}),
                param("_format", 0, "1", Some("code"), format_doc),
                param(
                    "header",
                    0,
                    "1",
                    Some("boolean"),
                    "CSV: whether files start with a header line (default true).",
                ),
                param(
                    "patient",
                    0,
                    "*",
                    Some("Reference"),
                    "Only these patients' compartments (as a Patient-level export).",
                ),
                param(
                    "group",
                    0,
                    "1",
                    Some("Reference"),
                    "Only the members of this Group (as a Group-level export).",
                ),
                param(
                    "_since",
                    0,
                    "1",
                    Some("instant"),
                    "Only resources last updated after this instant.",
                ),
                param(
                    "clientTrackingId",
                    0,
                    "1",
                    Some("string"),
                    "Kept with the job.",
                ),
            ],
        ),
        "viewdefinition-run" => (
            "ViewDefinitionRun",
            "SQL on FHIR ViewDefinition Run",
            "viewdefinition-run",
            vec![
                param("viewResource", 0, "1", Some("Resource"), view_resource),
                param("viewReference", 0, "1", Some("Reference"), view_reference),
                param(
                    "_format",
                    0,
                    "1",
                    Some("code"),
                    "json (default: an array of row objects), ndjson, csv or parquet.",
                ),
                param(
                    "header",
                    0,
                    "1",
                    Some("boolean"),
                    "CSV: whether the output starts with a header line (default true).",
                ),
                param(
                    "_limit",
                    0,
                    "1",
                    Some("integer"),
                    "At most this many rows (at most 10,000).",
                ),
                param(
                    "patient",
                    0,
                    "1",
                    Some("Reference"),
                    "Only this patient's compartment.",
                ),
                param(
                    "resource",
                    0,
                    "*",
                    Some("Resource"),
                    "Resources to run the view over instead of the stored data.",
                ),
            ],
        ),
        _ => return None,
    };
    Some(json!({
        "resourceType": "OperationDefinition",
        "id": id,
        "url": format!("http://sql-on-fhir.org/OperationDefinition/${code}"),
        "name": name,
        "title": title,
        "status": "active",
        "kind": "operation",
        "affectsState": false,
        "code": code,
        "resource": ["ViewDefinition"],
        "system": true,
        "type": true,
        "instance": false,
        "parameter": parameters,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_operation_definitions_are_served_by_id() {
        assert!(operation_definition("unknown").is_none());
        for (id, resource) in [
            ("export", None),
            ("patient-export", Some("Patient")),
            ("group-export", Some("Group")),
        ] {
            let d = operation_definition(id).unwrap();
            assert_eq!(
                d["url"],
                format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{id}")
            );
            assert_eq!(d["code"], "export");
            assert_eq!(d["resource"][0].as_str(), resource);
            let has_patient = d["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "patient");
            assert_eq!(has_patient, resource.is_some());
        }
        assert!(operation_definition("nope").is_none());
    }
}
