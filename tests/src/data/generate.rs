//! The data set the tests generate when ../shared's Synthea data is not beside the checkout.

use super::*;

/// Writes a small deterministic data set: patients with encounters, observations (five
/// categories) and conditions; organizations (some never referenced), practitioners, devices
/// (not in the Patient compartment, never referenced), a coverage per patient, Provenance,
/// references to Locations that do not exist, and a Group holding every other patient.
pub fn generate(dir: &Path, patients: usize) {
    let mut files: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let orgs = 5;
    for o in 0..orgs {
        files.entry("Organization").or_default().push(json!({
            "resourceType": "Organization", "id": format!("org-{o}"), "name": format!("Org {o}")}));
    }
    files.entry("Organization").or_default().push(json!({
        "resourceType": "Organization", "id": "org-unreferenced", "name": "Nobody's"}));
    for p in 0..3 {
        files.entry("Practitioner").or_default().push(json!({
            "resourceType": "Practitioner", "id": format!("prac-{p}")}));
    }
    let mut members = Vec::new();
    for i in 0..patients {
        let pid = format!("pat-{i}");
        let org = format!("Organization/org-{}", i % (orgs - 1));
        files.entry("Patient").or_default().push(json!({
            "resourceType": "Patient", "id": pid, "gender": if i % 2 == 0 {"female"} else {"male"},
            "managingOrganization": {"reference": org}}));
        for e in 0..3 {
            let eid = format!("enc-{i}-{e}");
            let mut encounter = json!({
                "resourceType": "Encounter", "id": eid, "status": "finished",
                "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{pid}")},
                "participant": [{"individual": {"reference": format!("Practitioner/prac-{}", e % 3)}}],
                "serviceProvider": {"reference": format!("Organization/org-{}", (i + e) % (orgs - 1))}});
            // Only in sets of more than 30 patients, such as the end-to-end set (smaller tests
            // keep an empty error[]): Locations, an AdditionalResources type, one that exists
            // and some that do not (dangling references: exports report each in error[]).
            if i >= 30 && i % 5 == 2 && e == 0 {
                encounter["location"] =
                    json!([{"location": {"reference": format!("Location/loc-missing-{i}")}}]);
            } else if i >= 30 && e == 1 {
                encounter["location"] = json!([{"location": {"reference": "Location/loc-main"}}]);
            }
            files.entry("Encounter").or_default().push(encounter);
            for o in 0..4 {
                // Per encounter, on day e+1: a vital sign, a second Observation whose category
                // varies (vital signs, survey, social history, exam: US Core categories, as in
                // Synthea) and two laboratory results.
                let category = match (o, (i + e) % 4) {
                    (0, _) | (1, 0) => "vital-signs",
                    (1, 1) => "survey",
                    (1, 2) => "social-history",
                    (1, _) => "exam",
                    _ => "laboratory",
                };
                files.entry("Observation").or_default().push(json!({
                    "resourceType": "Observation", "id": format!("obs-{i}-{e}-{o}"), "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                    "code": observation_code(o), "subject": {"reference": format!("Patient/{pid}")},
                    "encounter": {"reference": format!("Encounter/{eid}")},
                    "effectiveDateTime": format!("2020-01-0{}T10:00:00Z", e + 1),
                    "valueQuantity": {"value": format!("{DECIMAL_MARK}{}", (i + e + o) % DECIMALS.len()), "unit": "/min"}}));
            }
        }
        files.entry("Condition").or_default().push(json!({
            "resourceType": "Condition", "id": format!("cond-{i}"),
            "subject": {"reference": format!("Patient/{pid}")}, "code": {"text": "asthma"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": if i % 2 == 0 { "active" } else { "resolved" }}]}}));
        files.entry("Coverage").or_default().push(json!({
            "resourceType": "Coverage", "id": format!("cov-{i}"), "status": "active",
            "beneficiary": {"reference": format!("Patient/{pid}")},
            "payor": [{"reference": "Organization/org-0"}]}));
        // Provenance: one on the Patient (in its compartment), and two on its first two
        // encounters (not in the compartment), the newer being the latest for both.
        for (suffix, recorded, targets) in [
            (
                "patient",
                "2019-06-01T00:00:00Z",
                vec![format!("Patient/{pid}")],
            ),
            (
                "old",
                "2020-06-01T00:00:00Z",
                vec![
                    format!("Encounter/enc-{i}-0"),
                    format!("Encounter/enc-{i}-1"),
                ],
            ),
            (
                "new",
                "2021-06-01T00:00:00Z",
                vec![
                    format!("Encounter/enc-{i}-0"),
                    format!("Encounter/enc-{i}-1"),
                ],
            ),
        ] {
            let target: Vec<Value> = targets.iter().map(|t| json!({"reference": t})).collect();
            files.entry("Provenance").or_default().push(json!({
                "resourceType": "Provenance", "id": format!("prov-{i}-{suffix}"), "target": target,
                "recorded": recorded, "agent": [{"who": {"reference": "Practitioner/prac-0"}}]}));
        }
        if i % 10 == 0 {
            files.entry("Device").or_default().push(json!({
                "resourceType": "Device", "id": format!("dev-{i}"),
                "patient": {"reference": format!("Patient/{pid}")}}));
        }
        if i % 2 == 0 {
            members.push(json!({"entity": {"reference": format!("Patient/{pid}")}}));
        }
    }
    if patients > 30 {
        files.entry("Location").or_default().push(json!({
            "resourceType": "Location", "id": "loc-main", "name": "Main campus"}));
    }
    files.entry("Provenance").or_default().push(json!({
        "resourceType": "Provenance", "id": "prov-org", "recorded": "2021-01-01T00:00:00Z",
        "target": [{"reference": "Organization/org-unreferenced"}],
        "agent": [{"who": {"reference": "Practitioner/prac-1"}}]}));
    files.entry("Group").or_default().push(json!({
        "resourceType": "Group", "id": "group-even", "type": "person", "actual": true,
        "member": members}));
    files.entry("Group").or_default().push(json!({
        "resourceType": "Group", "id": "group-other", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/pat-1"}}]}));
    std::fs::create_dir_all(dir).expect("dir");
    for (t, rows) in files {
        let mut f = std::fs::File::create(dir.join(format!("{t}.000.ndjson"))).expect("file");
        for r in rows {
            let mut line = r.to_string();
            for (k, text) in DECIMALS.iter().enumerate() {
                line = line.replace(&format!("\"{DECIMAL_MARK}{k}\""), text);
            }
            writeln!(f, "{line}").expect("write");
        }
    }
}

/// Observation values as written in the generated files: decimals whose text an f64 round trip
/// would change (trailing zeros, `.0`, 17 significant digits, an exponent). FHIR requires their
/// precision kept; the exports must give them back byte for byte.
pub const DECIMALS: &[&str] = &[
    "60.50",
    "63.0",
    "61",
    "62.41600000000001",
    "6.3E1",
    "60.00",
    "11266.736000000003",
];
const DECIMAL_MARK: &str = "__decimal_";

/// An Observation's code: LOINC, and for some a second coding (SNOMED CT) as Synthea writes
/// them (views unnest `code.coding`).
fn observation_code(o: usize) -> Value {
    let mut coding =
        vec![json!({"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"})];
    if o % 2 == 1 {
        coding.push(json!({"system": "http://snomed.info/sct", "code": "364075005", "display": "Heart rate"}));
    }
    json!({"coding": coding, "text": "heart rate"})
}
