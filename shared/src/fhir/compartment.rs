//! Patient-compartment membership and outgoing references of one resource, computed on load.

use std::collections::BTreeSet;

use super::compartment_table::PATIENT_COMPARTMENT;

/// A relative reference `Type/id` (absolute URLs are reduced to their last two segments,
/// `_history` suffixes dropped). Contained (`#x`) and `urn:` references are not resource links.
pub fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    // memchr: a `split` by a set of chars tests one char at a time, and `find` of a &str
    // builds a searcher per call, and the loader parses every reference of every resource. Types and ids hold no '_': only a path with one can hold
    // "/_history/".
    let path = match memchr::memchr2(b'?', b'#', reference.as_bytes()) {
        Some(i) => &reference[..i],
        None => reference,
    };
    let path = match memchr::memchr(b'_', path.as_bytes()).and_then(|_| path.find("/_history/")) {
        Some(i) => &path[..i],
        None => path,
    };
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let rtype = segments.next()?;
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid_id && super::resource_types::is_resource_type(rtype) {
        Some((rtype, id))
    } else {
        None
    }
}

/// The ids of the patients whose compartment this resource is in (R4 CompartmentDefinition),
/// from its references with their paths ([`crate::fhir::scan`]).
pub fn patient_ids(
    resource_type: &str,
    id: &str,
    references: &[(String, String)],
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if resource_type == "Patient" {
        out.insert(id.to_string());
    }
    if let Some(entry) = PATIENT_COMPARTMENT
        .iter()
        .find(|e| e.resource_type == resource_type)
    {
        for (path, reference) in references {
            if !entry.paths.iter().any(|p| same_path(p, path)) {
                continue;
            }
            if let Some(("Patient", pid)) = parse_reference(reference) {
                out.insert(pid.to_string());
            }
        }
    }
    out
}

/// Whether `path` (keys joined by `/`) is `keys`.
fn same_path(keys: &[&str], path: &str) -> bool {
    let mut parts = path.split('/');
    keys.iter().all(|k| parts.next() == Some(*k)) && parts.next().is_none()
}

/// Every `Type/id` among a resource's references (anywhere in its tree).
pub fn references(references: &[(String, String)]) -> BTreeSet<(String, String)> {
    references
        .iter()
        .filter_map(|(_, r)| parse_reference(r))
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::scan::scan;
    use serde_json::{json, Value};

    fn refs(v: &Value) -> Vec<(String, String)> {
        scan(&v.to_string()).unwrap().references
    }

    fn patient_ids_of(rtype: &str, id: &str, v: &Value) -> BTreeSet<String> {
        patient_ids(rtype, id, &refs(v))
    }

    #[test]
    fn parse_reference_handles_relative_absolute_and_versioned() {
        assert_eq!(parse_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            parse_reference("http://x.org/fhir/Patient/a-1/_history/2"),
            Some(("Patient", "a-1"))
        );
        assert_eq!(parse_reference("#contained"), None);
        assert_eq!(parse_reference("urn:uuid:1234"), None);
        assert_eq!(parse_reference("Nope/1"), None);
        assert_eq!(parse_reference("Patient/../../etc"), None);
    }

    #[test]
    fn observation_subject_and_performer_make_membership() {
        let obs = json!({"resourceType":"Observation","id":"o1",
            "subject":{"reference":"Patient/p1"},
            "performer":[{"reference":"Patient/p2"},{"reference":"Practitioner/x"}],
            "hasMember":[{"reference":"Patient/not-a-path"}]});
        let ids: Vec<_> = patient_ids_of("Observation", "o1", &obs)
            .into_iter()
            .collect();
        assert_eq!(ids, vec!["p1", "p2"]);
    }

    #[test]
    fn nested_paths_walk_arrays() {
        let appt = json!({"resourceType":"Appointment","id":"a",
            "participant":[{"actor":{"reference":"Patient/p1"}},{"actor":{"reference":"Location/l"}}]});
        let ids: Vec<_> = patient_ids_of("Appointment", "a", &appt)
            .into_iter()
            .collect();
        assert_eq!(ids, vec!["p1"]);
    }

    #[test]
    fn patient_is_in_its_own_compartment_and_links() {
        let p = json!({"resourceType":"Patient","id":"p1","link":[{"other":{"reference":"Patient/p0"}}],
            "managingOrganization":{"reference":"Organization/o"}});
        let ids: Vec<_> = patient_ids_of("Patient", "p1", &p).into_iter().collect();
        assert_eq!(ids, vec!["p0", "p1"]);
    }

    #[test]
    fn types_outside_the_compartment_have_no_members() {
        let d = json!({"resourceType":"Device","id":"d","patient":{"reference":"Patient/p1"}});
        assert!(patient_ids_of("Device", "d", &d).is_empty());
    }

    #[test]
    fn references_are_collected_from_the_whole_tree() {
        let enc = json!({"resourceType":"Encounter","subject":{"reference":"Patient/p"},
            "serviceProvider":{"reference":"Organization/o"},
            "participant":[{"individual":{"reference":"Practitioner/x"}}],
            "contained":[{"id":"c"}], "partOf":{"reference":"#c"}});
        let refs: Vec<_> = references(&refs(&enc)).into_iter().collect();
        assert_eq!(
            refs,
            vec![
                ("Organization".to_string(), "o".to_string()),
                ("Patient".to_string(), "p".to_string()),
                ("Practitioner".to_string(), "x".to_string())
            ]
        );
    }

    /// The walk over a parsed `Value` that the scan replaced, kept as the scan's oracle.
    fn value_patient_ids(resource_type: &str, id: &str, resource: &Value) -> BTreeSet<String> {
        fn collect_path(value: &Value, path: &[&str], found: &mut impl FnMut(&str)) {
            match value {
                Value::Array(items) => items.iter().for_each(|v| collect_path(v, path, found)),
                Value::Object(map) => match path.split_first() {
                    None => {
                        if let Some(Value::String(r)) = map.get("reference") {
                            found(r);
                        }
                    }
                    Some((head, rest)) => {
                        if let Some(child) = map.get(*head) {
                            collect_path(child, rest, found);
                        }
                    }
                },
                _ => {}
            }
        }
        let mut out = BTreeSet::new();
        if resource_type == "Patient" {
            out.insert(id.to_string());
        }
        if let Some(entry) = PATIENT_COMPARTMENT
            .iter()
            .find(|e| e.resource_type == resource_type)
        {
            for path in entry.paths {
                collect_path(resource, path, &mut |reference| {
                    if let Some(("Patient", pid)) = parse_reference(reference) {
                        out.insert(pid.to_string());
                    }
                });
            }
        }
        out
    }

    fn value_references(value: &Value, out: &mut BTreeSet<(String, String)>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| value_references(v, out)),
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "reference" {
                        if let Value::String(r) = child {
                            if let Some((t, i)) = parse_reference(r) {
                                out.insert((t.to_string(), i.to_string()));
                            }
                        }
                    } else {
                        value_references(child, out);
                    }
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_scan_finds_what_a_walk_over_the_parsed_tree_finds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../infra/sample-data/synthea-10");
        let mut checked = 0;
        let mut members = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let value: Value = serde_json::from_str(line).unwrap();
                let scanned = scan(line).unwrap();
                let rtype = value["resourceType"].as_str().unwrap();
                let id = value["id"].as_str().unwrap();
                assert_eq!(scanned.resource_type.as_deref(), Some(rtype));
                assert_eq!(scanned.id.as_deref(), Some(id));
                let mut expected = BTreeSet::new();
                value_references(&value, &mut expected);
                assert_eq!(references(&scanned.references), expected, "{line}");
                let patients = patient_ids(rtype, id, &scanned.references);
                assert_eq!(patients, value_patient_ids(rtype, id, &value), "{line}");
                members += patients.len();
                checked += 1;
            }
        }
        // The shipped sample: 10 patients' records, nearly every one in a compartment.
        assert!(checked > 3000, "{checked} resources checked");
        assert!(members > checked / 2, "{members} memberships");
    }

    #[test]
    fn the_scan_reports_meta_duplicates_and_nested_references() {
        let s = scan(r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"2","lastUpdated":"2020-01-01T00:00:00Z","extension":[{"valueReference":{"reference":"Patient/m"}}]},"reference":"Patient/top","contained":[{"resourceType":"Patient","id":"c","link":[{"other":{"reference":{"not":"a string"}}}]}],"subject":{"reference":"Patient/p\u0031"}}"#).unwrap();
        assert_eq!(s.meta, crate::fhir::scan::Meta::Complete);
        assert_eq!(
            s.references,
            vec![
                (
                    "meta/extension/valueReference".to_string(),
                    "Patient/m".to_string()
                ),
                (String::new(), "Patient/top".to_string()),
                ("subject".to_string(), "Patient/p1".to_string()),
            ]
        );
        let partial =
            scan(r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"}}"#).unwrap();
        assert_eq!(partial.meta, crate::fhir::scan::Meta::Partial);
        let absent = scan(r#"{"resourceType":"Patient","id":"p"}"#).unwrap();
        assert_eq!(absent.meta, crate::fhir::scan::Meta::Absent);
        assert!(scan(r#"{"resourceType":"Patient","id":"p","id":"q"}"#).is_err());
        assert!(scan(r#"{"resourceType":"Patient","resourceType":"Group","id":"p"}"#).is_err());
        assert!(scan(r#"{"resourceType":"Patient","id":"p"} x"#).is_err());
        assert!(scan(r#"["resourceType"]"#).is_err());
        let numeric = scan(r#"{"resourceType":"Patient","id":7}"#).unwrap();
        assert_eq!(numeric.id, None);
        // Keys with escapes mean what they spell (keys are borrowed from the text otherwise).
        let escaped = scan(
            r#"{"resource\u0054ype":"Observation","i\u0064":"o","subj\u0065ct":{"r\u0065ference":"Patient/p"}}"#,
        )
        .unwrap();
        assert_eq!(escaped.resource_type.as_deref(), Some("Observation"));
        assert_eq!(escaped.id.as_deref(), Some("o"));
        assert_eq!(
            escaped.references,
            vec![("subject".to_string(), "Patient/p".to_string())]
        );
        assert!(scan(r#"{"resourceType":"Patient","\u0069d":"p","id":"q"}"#).is_err());
    }
}
