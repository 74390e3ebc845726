use super::*;
use serde_json::json;

#[test]
fn prepare_rejects_what_cannot_be_stored() {
    let prep = |v: Value| prepare(v.to_string());
    assert!(prep(json!({"id": "x"})).is_err());
    assert!(prep(json!({"resourceType": "Nope", "id": "x"})).is_err());
    assert!(prep(json!({"resourceType": "Patient"})).is_err());
    assert!(prep(json!({"resourceType": "Patient", "id": "a/b"})).is_err());
    let r = prep(json!({"resourceType": "Patient", "id": "p"})).unwrap();
    assert_eq!(r.patients.iter().collect::<Vec<_>>(), vec!["p"]);
    let two_lines = "{\"resourceType\":\"Patient\",\n\"id\":\"p\"}";
    assert!(prepare(two_lines.into()).is_err());
    // A resourceType or id given twice: readers disagree on which counts.
    assert!(prepare(r#"{"resourceType":"Patient","id":"p","id":"q"}"#.into()).is_err());
}

#[test]
fn bundle_urn_uuid_references_become_relative() {
    let text = r#"{"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient"}},
        {"fullUrl": "urn:uuid:e1", "resource": {"resourceType": "Encounter", "id": "e1",
            "subject": {"reference": "urn:uuid:p1"},
            "length": {"value": 1.50}}},
        {"request": {"method": "DELETE", "url": "Patient/x"}}
    ]}"#;
    let out = bundle_resources(text, serde_json::from_str(text).unwrap()).unwrap();
    assert_eq!(out.len(), 3);
    let resource = |i: usize| match &out[i] {
        Ok(BundleEntry::Resource { text }) => (
            text.clone(),
            serde_json::from_str::<Value>(text).expect("stored text is JSON"),
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(resource(0).1["id"], "p1");
    assert_eq!(resource(0).0, r#"{"resourceType":"Patient","id":"p1"}"#);
    assert_eq!(resource(1).1["subject"]["reference"], "Patient/p1");
    // The stored text keeps the decimal as written, on one line.
    assert_eq!(
        resource(1).0,
        r#"{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},"length":{"value":1.50}}"#
    );
    assert_eq!(
        out[2],
        Ok(BundleEntry::Delete {
            resource_type: "Patient".into(),
            id: "x".into()
        })
    );
    assert!(parse_type_id("Patient/../x").is_err());
}
