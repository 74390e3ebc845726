//! `GET [base]/metadata`: a CapabilityStatement that instantiates the Bulk Data one.

use serde_json::{json, Value};

use crate::config::Config;
use crate::fhir::compartment_table::R4_RESOURCE_TYPES;

pub fn route_prefix(path: &str) -> Option<&str> {
    path.strip_suffix("/metadata")
}

pub fn capability_statement(base: &str, config: &Config) -> Value {
    let export_op = |name: &str, def: &str| json!({"name": name, "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{def}")});
    let mut resources: Vec<Value> = R4_RESOURCE_TYPES
        .iter()
        .filter(|t| **t != "Patient" && **t != "Group")
        .map(|t| json!({"type": t}))
        .collect();
    // `_lastUpdated` tells clients (e.g. smart-fetch) that `_since` filters on last update.
    resources.push(json!({
        "type": "Patient",
        "operation": [export_op("export", "patient-export")],
        "searchParam": [{"name": "_lastUpdated", "type": "date"}]
    }));
    resources.push(json!({
        "type": "Group",
        "operation": [export_op("export", "group-export")],
        "documentation": "Group.member references to Patient define the patients; other Groups are never exported by a Group export."
    }));
    json!({
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
                "Bulk Data export (IG v2.0.0), kick-off by GET or POST (Parameters). Parameters: _type, _since, _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), patient (Patient and Group level). Prefer: handling=lenient ignores unsupported parameters and reports them in error[]. _since exports list deletions in deleted[]. Patient and Group exports contain the R4 Patient compartment plus referenced {}. A Group export covers the patients in Group.member at the time of the export, with all of their data that matches _since (membership history is not kept). Over-polling a status URL gets 429.",
                config.additional_resources.join(", ")
            ),
            "resource": resources,
            "operation": [export_op("export", "export")]
        }]
    })
}

/// `[base]/OperationDefinition/{id}`: the id when the path names one of ours.
pub fn operation_definition_id(path: &str) -> Option<&str> {
    let (prefix, id) = path.rsplit_once('/')?;
    prefix.ends_with("/OperationDefinition").then_some(id)
}

/// The Bulk Data IG v2.0.0 OperationDefinitions (`export`, `patient-export`, `group-export`),
/// with what this server supports said in each parameter's documentation.
pub fn operation_definition(id: &str) -> Option<Value> {
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
        param("_elements", "*", "string", "Not supported yet (400, or ignored and reported with handling=lenient)."),
        param("includeAssociatedData", "*", "code", "Not supported yet."),
        param("_typeFilter", "*", "string", "Not supported yet."),
    ];
    if resource.is_some() {
        parameters.push(param(
            "patient",
            "*",
            "Reference",
            "Supported (POST Parameters or GET): only these patients; unknown patients or ones outside the Group are a 400.",
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_operation_definitions_are_served_by_id() {
        assert_eq!(
            operation_definition_id("/fhir/OperationDefinition/export"),
            Some("export")
        );
        assert_eq!(operation_definition_id("/OperationDefinition"), None);
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
