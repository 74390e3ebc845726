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
    resources
        .push(json!({"type": "Patient", "operation": [export_op("export", "patient-export")]}));
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
                "Bulk Data export (IG v2.0.0). Parameters: _type, _since, _outputFormat (application/fhir+ndjson, application/ndjson, ndjson). Patient and Group exports contain the R4 Patient compartment plus referenced {}.",
                config.additional_resources.join(", ")
            ),
            "resource": resources,
            "operation": [export_op("export", "export")]
        }]
    })
}
