//! Patient-compartment membership and outgoing references of one resource, computed on load.

use std::collections::BTreeSet;

use serde_json::Value;

use super::compartment_table::PATIENT_COMPARTMENT;

/// A relative reference `Type/id` (absolute URLs are reduced to their last two segments,
/// `_history` suffixes dropped). Contained (`#x`) and `urn:` references are not resource links.
pub fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let path = reference.split(['?', '#']).next()?;
    let path = match path.find("/_history/") {
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

/// The ids of the patients whose compartment this resource is in (R4 CompartmentDefinition).
pub fn patient_ids(resource_type: &str, id: &str, resource: &Value) -> BTreeSet<String> {
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

/// Every `Type/id` this resource references, anywhere in its tree.
pub fn references(resource: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    walk_references(resource, &mut out);
    out
}

fn walk_references(value: &Value, out: &mut BTreeSet<(String, String)>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk_references(v, out)),
        Value::Object(map) => {
            for (key, child) in map {
                if key == "reference" {
                    if let Value::String(r) = child {
                        if let Some((t, i)) = parse_reference(r) {
                            out.insert((t.to_string(), i.to_string()));
                        }
                    }
                } else {
                    walk_references(child, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let ids: Vec<_> = patient_ids("Observation", "o1", &obs).into_iter().collect();
        assert_eq!(ids, vec!["p1", "p2"]);
    }

    #[test]
    fn nested_paths_walk_arrays() {
        let appt = json!({"resourceType":"Appointment","id":"a",
            "participant":[{"actor":{"reference":"Patient/p1"}},{"actor":{"reference":"Location/l"}}]});
        let ids: Vec<_> = patient_ids("Appointment", "a", &appt).into_iter().collect();
        assert_eq!(ids, vec!["p1"]);
    }

    #[test]
    fn patient_is_in_its_own_compartment_and_links() {
        let p = json!({"resourceType":"Patient","id":"p1","link":[{"other":{"reference":"Patient/p0"}}],
            "managingOrganization":{"reference":"Organization/o"}});
        let ids: Vec<_> = patient_ids("Patient", "p1", &p).into_iter().collect();
        assert_eq!(ids, vec!["p0", "p1"]);
    }

    #[test]
    fn types_outside_the_compartment_have_no_members() {
        let d = json!({"resourceType":"Device","id":"d","patient":{"reference":"Patient/p1"}});
        assert!(patient_ids("Device", "d", &d).is_empty());
    }

    #[test]
    fn references_are_collected_from_the_whole_tree() {
        let enc = json!({"resourceType":"Encounter","subject":{"reference":"Patient/p"},
            "serviceProvider":{"reference":"Organization/o"},
            "participant":[{"individual":{"reference":"Practitioner/x"}}],
            "contained":[{"id":"c"}], "partOf":{"reference":"#c"}});
        let refs: Vec<_> = references(&enc).into_iter().collect();
        assert_eq!(
            refs,
            vec![
                ("Organization".to_string(), "o".to_string()),
                ("Patient".to_string(), "p".to_string()),
                ("Practitioner".to_string(), "x".to_string())
            ]
        );
    }
}
