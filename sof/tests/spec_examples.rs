//! The example ViewDefinitions of the SQL on FHIR v2 specification (input/fsh/examples of
//! FHIR/sql-on-fhir-v2, written out as JSON): each is accepted (warned only about columns that
//! run through a repeating element), and, when the
//! Synthea data beside the checkout is there (../shared/data; not with TEST_WITHOUT_SHARED=1),
//! runs over every resource of its type without an error, giving the rows the data implies.

use std::path::PathBuf;

use serde_json::{json, Value};
use sof::View;

fn examples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "PatientDemographics",
            json!({
                "resourceType": "ViewDefinition", "name": "patient_demographics", "status": "draft",
                "resource": "Patient",
                "select": [
                    {"column": [
                        {"path": "getResourceKey()", "name": "id"},
                        {"path": "gender", "name": "gender"}
                    ]},
                    {"forEach": "name.where(use = 'official').first()", "column": [
                        {"path": "given.join(' ')", "name": "given_name"},
                        {"path": "family", "name": "family_name"}
                    ]}
                ]
            }),
        ),
        (
            "PatientAddresses",
            json!({
                "resourceType": "ViewDefinition", "name": "patient_addresses", "status": "draft",
                "resource": "Patient",
                "select": [
                    {"column": [{"path": "getResourceKey()", "name": "patient_id"}]},
                    {"forEach": "address", "column": [
                        {"path": "line.join('\\n')", "name": "street"},
                        {"path": "use", "name": "use"},
                        {"path": "city", "name": "city"},
                        {"path": "postalCode", "name": "zip"}
                    ]}
                ]
            }),
        ),
        (
            "PatientAndContactAddressUnion",
            json!({
                "resourceType": "ViewDefinition", "name": "patient_and_contact_addresses",
                "status": "draft", "resource": "Patient",
                "select": [{
                    "column": [{"path": "getResourceKey()", "name": "resource_id"}],
                    "unionAll": [
                        {"forEach": "address", "column": [
                            {"path": "line.join('\\n')", "name": "street"},
                            {"path": "city", "name": "city"},
                            {"path": "postalCode", "name": "zip"},
                            {"path": "true", "name": "is_patient"}
                        ]},
                        {"forEach": "contact.address", "column": [
                            {"path": "line.join('\\n')", "name": "street"},
                            {"path": "city", "name": "city"},
                            {"path": "postalCode", "name": "zip"},
                            {"path": "false", "name": "is_patient"}
                        ]}
                    ]
                }]
            }),
        ),
        (
            "UsCoreBloodPressures",
            json!({
                "resourceType": "ViewDefinition", "name": "us_core_blood_pressures",
                "status": "draft", "resource": "Observation",
                "constant": [
                    {"name": "systolic_bp", "valueCode": "8480-6"},
                    {"name": "diastolic_bp", "valueCode": "8462-4"},
                    {"name": "bp_code", "valueCode": "85354-9"}
                ],
                "select": [
                    {"column": [
                        {"path": "getResourceKey()", "name": "id"},
                        {"path": "subject.getReferenceKey(Patient)", "name": "patient_id"},
                        {"path": "effective.ofType(dateTime)", "name": "effective_date_time"}
                    ]},
                    {"forEach": "component.where(code.coding.exists(system='http://loinc.org' and code=%systolic_bp)).first()",
                     "column": [
                        {"name": "sbp_quantity_system", "path": "value.ofType(Quantity).system"},
                        {"name": "sbp_quantity_code", "path": "value.ofType(Quantity).code"},
                        {"name": "sbp_quantity_unit", "path": "value.ofType(Quantity).unit"},
                        {"name": "sbp_quantity_value", "path": "value.ofType(Quantity).value"}
                    ]},
                    {"forEach": "component.where(code.coding.exists(system='http://loinc.org' and code=%diastolic_bp)).first()",
                     "column": [
                        {"name": "dbp_quantity_system", "path": "value.ofType(Quantity).system"},
                        {"name": "dbp_quantity_code", "path": "value.ofType(Quantity).code"},
                        {"name": "dbp_quantity_unit", "path": "value.ofType(Quantity).unit"},
                        {"name": "dbp_quantity_value", "path": "value.ofType(Quantity).value"}
                    ]}
                ],
                "where": [{"path": "code.coding.exists(system='http://loinc.org' and code=%bp_code)"}]
            }),
        ),
        (
            "ConditionFlat",
            json!({
                "resourceType": "ViewDefinition", "name": "condition_flat", "status": "draft",
                "resource": "Condition",
                "select": [
                    {"column": [
                        {"path": "getResourceKey()", "name": "id"},
                        {"path": "subject.getReferenceKey(Patient)", "name": "patient_id"},
                        {"path": "encounter.getReferenceKey(Encounter)", "name": "encounter_id"},
                        {"path": "onset.ofType(dateTime)", "name": "onset_datetime", "type": "dateTime"}
                    ]},
                    {"forEachOrNull": "code.coding", "column": [
                        {"name": "system", "path": "system", "type": "uri"},
                        {"path": "code", "name": "code"}
                    ]},
                    {"forEachOrNull": "category.coding", "column": [{"path": "code", "name": "category"}]},
                    {"forEachOrNull": "clinicalStatus.coding", "column": [{"path": "code", "name": "clinical_status"}]},
                    {"forEachOrNull": "verificationStatus.coding", "column": [{"path": "code", "name": "verification_status"}]}
                ]
            }),
        ),
        (
            "EncounterFlat",
            json!({
                "resourceType": "ViewDefinition", "name": "encounter_flat", "status": "draft",
                "resource": "Encounter", "fhirVersion": ["4.0"],
                "select": [
                    {"column": [
                        {"path": "getResourceKey()", "name": "id"},
                        {"path": "status", "name": "status"},
                        {"path": "subject.getReferenceKey(Patient)", "name": "patient_id"},
                        {"path": "serviceProvider.getReferenceKey(Organization)", "name": "service_org_id"},
                        {"path": "period.start", "name": "period_start"},
                        {"path": "period.end", "name": "period_end"},
                        {"path": "episodeOfCare.getReferenceKey(EpisodeOfCare)", "name": "EpisodeOfCareId"}
                    ]},
                    {"forEachOrNull": "type.coding", "column": [
                        {"path": "system", "name": "type_sys"},
                        {"path": "code", "name": "type_code"}
                    ]},
                    {"forEachOrNull": "participant", "column": [
                        {"path": "individual.getReferenceKey(Practitioner)", "name": "practitioner_id"}
                    ]},
                    {"forEachOrNull": "location", "column": [
                        {"path": "location.getReferenceKey(Location)", "name": "location_id"}
                    ]}
                ]
            }),
        ),
        (
            "PatientNamesWithIndex",
            json!({
                "resourceType": "ViewDefinition", "name": "patient_names_with_index",
                "status": "draft", "resource": "Patient",
                "select": [
                    {"column": [{"path": "getResourceKey()", "name": "patient_id"}]},
                    {"forEach": "name", "column": [
                        {"path": "%rowIndex", "name": "name_index", "type": "integer"},
                        {"path": "use", "name": "use"},
                        {"path": "family", "name": "family"},
                        {"path": "given.join(' ')", "name": "given"}
                    ]}
                ]
            }),
        ),
        (
            "QuestionnaireResponseItems",
            json!({
                "resourceType": "ViewDefinition", "name": "questionnaire_response_items",
                "status": "draft", "resource": "QuestionnaireResponse",
                "select": [
                    {"column": [
                        {"path": "getResourceKey()", "name": "id"},
                        {"path": "questionnaire", "name": "questionnaire"},
                        {"path": "subject.getReferenceKey(Patient)", "name": "patient_id"},
                        {"path": "authored", "name": "authored"}
                    ]},
                    {"repeat": ["item"], "column": [
                        {"path": "linkId", "name": "item_link_id"},
                        {"path": "text", "name": "item_text"},
                        {"path": "answer.value.ofType(string)", "name": "answer_value_string"},
                        {"path": "answer.value.ofType(integer)", "name": "answer_value_integer"},
                        {"path": "answer.value.ofType(boolean)", "name": "answer_value_boolean"},
                        {"path": "answer.value.ofType(date)", "name": "answer_value_date"}
                    ]}
                ]
            }),
        ),
    ]
}

#[test]
fn spec_examples_are_accepted() {
    for (name, json) in examples() {
        let view = View::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let warnings: Vec<String> = view.warnings().iter().map(|w| w.to_string()).collect();
        // Some examples have columns whose path runs through a repeating element without
        // `collection: true` (QuestionnaireResponse.item.answer, Encounter.episodeOfCare): the
        // model warns about those; nothing else.
        let repeats = "an element on this path repeats";
        let other: Vec<&String> = warnings.iter().filter(|w| !w.contains(repeats)).collect();
        assert!(other.is_empty(), "{name}: {other:?}");
        if name == "EncounterFlat" {
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0]
                .starts_with("select[0].column[6].path: an element on this path repeats"));
        }
        if name == "PatientDemographics" {
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        assert!(!view.columns().is_empty());
    }
    // Column types where the model knows them.
    let (_, bp) = examples().swap_remove(3);
    let bp = View::from_json(&bp).unwrap_or_else(|e| panic!("{e}"));
    let types: Vec<(&str, Option<&str>)> = bp
        .columns()
        .iter()
        .map(|c| (c.name(), c.fhir_type()))
        .collect();
    assert_eq!(types[0], ("id", Some("id")));
    assert_eq!(types[2], ("effective_date_time", Some("dateTime")));
    assert_eq!(types[6], ("sbp_quantity_value", Some("decimal")));
}

fn synthea_dir() -> Option<PathBuf> {
    if std::env::var("TEST_WITHOUT_SHARED").is_ok_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/synthea-bulk-data-server-100");
    dir.is_dir().then_some(dir)
}

fn resources(dir: &std::path::Path, resource_type: &str) -> Vec<Value> {
    let path = dir.join(format!("{resource_type}.000.ndjson"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect()
}

#[test]
fn spec_examples_run_over_synthea() {
    let Some(dir) = synthea_dir() else {
        println!("SKIPPED: no Synthea data beside the checkout");
        return;
    };
    for (name, json) in examples() {
        let view = View::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = resources(&dir, view.resource_type());
        let mut rows = Vec::new();
        let mut per_resource = Vec::new();
        for r in &data {
            let n = view
                .append_rows(r, &mut rows)
                .unwrap_or_else(|e| panic!("{name} on {}: {e}", r["id"]));
            per_resource.push(n);
        }
        let width = view.columns().len();
        assert_eq!(
            rows.len(),
            per_resource.iter().sum::<usize>() * width,
            "{name}"
        );
        println!(
            "{name}: {} {} resources, {} rows",
            data.len(),
            view.resource_type(),
            rows.len() / width
        );
        // Row counts the data implies, computed from the JSON directly.
        let count = |f: &dyn Fn(&Value) -> usize| data.iter().map(f).collect::<Vec<_>>();
        let len = |v: &Value| v.as_array().map_or(0, Vec::len);
        let expected: Option<Vec<usize>> = match name {
            "PatientDemographics" => Some(count(&|p| {
                len(&Value::Array(
                    p["name"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|n| n["use"] == "official")
                        .take(1)
                        .cloned()
                        .collect(),
                ))
            })),
            "PatientAddresses" | "PatientNamesWithIndex" => {
                let key = if name == "PatientAddresses" {
                    "address"
                } else {
                    "name"
                };
                Some(count(&|p| len(&p[key])))
            }
            _ => None,
        };
        if let Some(expected) = expected {
            assert_eq!(per_resource, expected, "{name}");
        }
        if name == "UsCoreBloodPressures" {
            // Every blood pressure panel with both components gives one row with both values.
            let panels = data
                .iter()
                .filter(|o| {
                    o["code"]["coding"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["code"] == "85354-9"))
                })
                .count();
            assert_eq!(per_resource.iter().sum::<usize>(), panels);
            for row in rows.chunks(width) {
                assert!(row[6].is_number() && row[10].is_number(), "{row:?}");
            }
        }
    }
}
