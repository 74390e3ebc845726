use serde_json::json;

use super::*;

/// The (element, message) of the error `view` is refused with.
fn refused(view: Value) -> (String, String) {
    match View::from_json(&view) {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => (e.element().to_string(), e.message().to_string()),
    }
}

fn patient_view(select: Value) -> Value {
    json!({"resourceType": "ViewDefinition", "resource": "Patient", "select": select})
}

#[test]
fn errors_name_the_element() {
    let (el, msg) = refused(patient_view(json!([
        {"column": [{"name": "id", "path": "id"}]},
        {"column": [{"name": "a", "path": "id"}, {"name": "b", "path": "name.foo()"}]}
    ])));
    assert_eq!(el, "select[1].column[1].path");
    assert!(
        msg.contains("unknown or unsupported function foo()"),
        "{msg}"
    );

    let (el, msg) = refused(patient_view(json!([
        {"column": [{"name": "id", "path": "id"}]},
        {"forEach": "name", "column": [{"name": "id", "path": "family"}]}
    ])));
    assert_eq!(el, "select[1].column[0].name");
    assert_eq!(
        msg,
        "column name 'id' is already used by select[0].column[0]"
    );

    let (el, msg) = refused(patient_view(json!([
        {"select": [{"forEach": "name.where(", "column": [{"name": "x", "path": "family"}]}]}
    ])));
    assert_eq!(el, "select[0].select[0].forEach");
    assert!(msg.contains("position"), "{msg}");

    let (el, _) = refused(patient_view(json!([{"forEach": 1}])));
    assert_eq!(el, "select[0].forEach");

    let (el, msg) = refused(patient_view(
        json!([{"column": [{"name": "1x", "path": "id"}]}]),
    ));
    assert_eq!(el, "select[0].column[0].name");
    assert!(msg.contains("not a valid column name"));

    let (el, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "id", "colection": true}]}]),
    ));
    assert_eq!(el, "select[0].column[0].colection");
    assert!(msg.starts_with("unknown element 'colection'"));

    let (el, _) = refused(patient_view(json!([{"column": [{"name": "x"}]}])));
    assert_eq!(el, "select[0].column[0].path");

    let (el, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "id", "type": "strng"}]}]),
    ));
    assert_eq!(el, "select[0].column[0].type");
    assert_eq!(msg, "unknown type 'strng'");

    let (el, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "name.exists()", "type": "string"}]}]),
    ));
    assert_eq!(el, "select[0].column[0].type");
    assert!(msg.contains("gives boolean"), "{msg}");

    let (el, _) = refused(patient_view(
        json!([{"forEach": "name", "repeat": ["item"], "column": [{"name": "x", "path": "id"}]}]),
    ));
    assert_eq!(el, "select[0]");

    let (el, msg) = refused(patient_view(json!([{"unionAll": [
        {"column": [{"name": "a", "path": "id"}, {"name": "b", "path": "id"}]},
        {"column": [{"name": "b", "path": "id"}, {"name": "a", "path": "id"}]}
    ]}])));
    assert_eq!(el, "select[0].unionAll[1]");
    assert!(msg.contains("(b, a) here, (a, b) in unionAll[0]"), "{msg}");

    let (el, _) = refused(patient_view(json!([{"unionAll": [
        {"column": [{"name": "a", "path": "id", "type": "id"}]},
        {"column": [{"name": "a", "path": "active", "type": "boolean"}]}
    ]}])));
    assert_eq!(el, "select[0].unionAll[1].column[0].type");
}

#[test]
fn top_level_errors() {
    assert_eq!(refused(json!([])).0, "");
    assert_eq!(
        refused(json!({"select": [{"column": [{"name": "a", "path": "id"}]}]})).0,
        "resource"
    );
    let (el, msg) = refused(
        json!({"resource": "Patiant", "select": [{"column": [{"name": "a", "path": "id"}]}]}),
    );
    assert_eq!(
        (el.as_str(), msg.as_str()),
        ("resource", "'Patiant' is not a resource type")
    );
    assert_eq!(refused(json!({"resource": "Patient"})).0, "select");
    assert_eq!(
        refused(json!({"resourceType": "Library", "resource": "Patient", "select": []})).0,
        "resourceType"
    );
    assert_eq!(
        refused(json!({"resource": "Patient", "name": "patient view", "select": [{"column": [{"name": "a", "path": "id"}]}]})).0,
        "name"
    );
    let (el, msg) = refused(json!({
        "resource": "Patient",
        "where": [{"path": "name.family"}, {"path": "'yes'"}],
        "select": [{"column": [{"name": "a", "path": "id"}]}]
    }));
    // The R4 model knows name.family is a string.
    assert_eq!(el, "where[0].path");
    assert_eq!(
        msg,
        "a where path must give a boolean, this one gives string"
    );
    let (el, _) = refused(json!({
        "resource": "Patient",
        "where": [{"path": "active"}, {"path": "'yes'"}],
        "select": [{"column": [{"name": "a", "path": "id"}]}]
    }));
    assert_eq!(el, "where[1].path");
    // A resource type check of the caller's.
    let only_patient = |t: &str| t == "Patient";
    assert!(View::from_json_with(
        &json!({"resource": "Observation", "select": [{"column": [{"name": "a", "path": "id"}]}]}),
        &only_patient
    )
    .is_err());
}

#[test]
fn constants_are_checked() {
    let view = |c: Value| json!({"resource": "Patient", "constant": c, "select": [{"column": [{"name": "a", "path": "id"}]}]});
    let (el, msg) = refused(view(json!([{"name": "x"}])));
    assert_eq!(el, "constant[0].value[x]");
    assert!(msg.contains("has no value"));
    assert_eq!(
        refused(view(json!([{"name": "x", "valueInteger": "1"}]))).0,
        "constant[0].valueInteger"
    );
    assert_eq!(
        refused(view(json!([{"name": "x", "valuePositiveInt": 0}]))).0,
        "constant[0].valuePositiveInt"
    );
    assert_eq!(
        refused(view(json!([{"name": "x", "valueQuantity": {"value": 1}}]))).0,
        "constant[0].valueQuantity"
    );
    assert_eq!(
        refused(view(
            json!([{"name": "x", "valueString": "a", "valueCode": "b"}])
        ))
        .0,
        "constant[0].valueCode"
    );
    assert_eq!(
        refused(view(
            json!([{"name": "x", "valueString": "a"}, {"name": "x", "valueString": "b"}])
        ))
        .0,
        "constant[1].name"
    );
    assert_eq!(
        refused(view(json!([{"name": "rowIndex", "valueInteger": 1}]))).0,
        "constant[0].name"
    );
    let ok = View::from_json(&view(
        json!([{"name": "big", "valueInteger64": "9007199254740993"}]),
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn columns_describe_the_output() {
    let v = View::from_json(&json!({
        "name": "obs",
        "resource": "Observation",
        "select": [{
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "code", "path": "code.coding.code", "collection": true, "type": "code"},
                {"name": "q", "path": "value.ofType(Quantity).value"},
                {"name": "has_value", "path": "value.exists()"},
                {"name": "rr", "path": "referenceRange.first()", "type": "Observation.referenceRange"},
                {"name": "issued", "path": "issued", "description": "When made available",
                 "tag": [{"name": "ansi/type", "value": "TIMESTAMP"}, {"name": "x", "value": "y"}]}
            ]
        }]
    }))
    .unwrap();
    assert_eq!(v.resource_type(), "Observation");
    assert_eq!(v.name(), Some("obs"));
    let c = v.columns();
    assert_eq!(c.len(), 6);
    assert_eq!(c[5].description(), Some("When made available"));
    assert_eq!(c[5].tag("ansi/type"), Some("TIMESTAMP"));
    assert_eq!(c[5].tags().len(), 2);
    assert_eq!(c[5].fhir_type(), Some("instant"));
    assert_eq!(c[0].tag("ansi/type"), None);
    assert_eq!(
        (c[0].name(), c[0].fhir_type(), c[0].collection()),
        ("id", Some("id"), false)
    );
    assert_eq!(
        (c[1].declared_type(), c[1].collection()),
        (Some("code"), true)
    );
    assert_eq!(c[1].inferred_type(), Some("code"));
    assert_eq!(c[2].fhir_type(), Some("decimal"));
    assert_eq!(c[3].inferred_type(), Some("boolean"));
    assert_eq!(c[4].fhir_type(), Some("Observation.referenceRange"));
    assert_eq!(c[4].element(), "select[0].column[4]");
}

#[test]
fn rows_and_evaluation_errors() {
    let v = View::from_json(&patient_view(json!([
        {"column": [{"name": "id", "path": "id"}]},
        {"forEachOrNull": "name", "column": [
            {"name": "i", "path": "%rowIndex"},
            {"name": "family", "path": "family"}
        ]}
    ])))
    .unwrap();
    let rows = v
        .rows(&json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}, {"family": "B"}]}))
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![json!("p"), json!(0), json!("A")],
            vec![json!("p"), json!(1), json!("B")]
        ]
    );
    let rows = v
        .rows(&json!({"resourceType": "Patient", "id": "q"}))
        .unwrap();
    assert_eq!(rows, vec![vec![json!("q"), json!(0), Value::Null]]);
    // Another resource type gives nothing.
    assert!(v
        .rows(&json!({"resourceType": "Observation", "id": "o"}))
        .unwrap()
        .is_empty());

    // append_rows keeps what `out` had and adds flattened rows.
    let mut out = vec![json!("keep")];
    let n = v
        .append_rows(
            &json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}]}),
            &mut out,
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(out, vec![json!("keep"), json!("p"), json!(0), json!("A")]);

    // Several values in a column that is not a collection: an error naming the column path,
    // and `out` is left as it was.
    let v = View::from_json(&patient_view(
        json!([{"column": [{"name": "g", "path": "name.given"}]}]),
    ))
    .unwrap();
    let mut out = Vec::new();
    let e = v
        .append_rows(
            &json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]}),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.element(), "select[0].column[0].path");
    assert!(e.message().contains("gave 2 values"), "{e}");
    assert!(out.is_empty());

    // A where path that gives a non-boolean element (an extension value may be of any type, so
    // this is only known with data).
    let v = View::from_json(&json!({
        "resource": "Patient",
        "where": [{"path": "extension('http://x').value"}],
        "select": [{"column": [{"name": "id", "path": "id"}]}]
    }))
    .unwrap();
    assert!(v
        .rows(&json!({"resourceType": "Patient", "id": "x"}))
        .unwrap()
        .is_empty());
    let e = v
        .rows(&json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": "F"}]}))
        .unwrap_err();
    assert_eq!(e.element(), "where[0].path");
    assert_eq!(
        e.to_string(),
        "where[0].path: a where path must give a boolean, this one gave the string 'F'"
    );
}

#[test]
fn decimals_are_kept_exactly() {
    let v = View::from_json(&json!({
        "resource": "Observation",
        "select": [{"column": [
            {"name": "v", "path": "value.ofType(Quantity).value"},
            {"name": "sum", "path": "value.ofType(Quantity).value + 0.2"}
        ]}]
    }))
    .unwrap();
    let rows = v
        .rows(&json!({"resourceType": "Observation", "valueQuantity": {"value": 0.1}}))
        .unwrap();
    assert_eq!(rows[0][0], json!(0.1));
    // 0.1 + 0.2 is 0.3 exactly (in f64 arithmetic it would be 0.30000000000000004).
    assert_eq!(rows[0][1].to_string(), "0.3");
}

#[test]
fn the_r4_model_types_paths() {
    // Element types flow through forEach, backbone elements, choice elements and ofType.
    let v = View::from_json(&json!({
        "resource": "Patient",
        "select": [
            {"column": [
                {"name": "id", "path": "id"},
                {"name": "active", "path": "active"},
                {"name": "birth", "path": "birthDate"},
                {"name": "deceased", "path": "deceased"},
                {"name": "deceased_at", "path": "deceased.ofType(dateTime)"}
            ]},
            {"forEach": "contact", "column": [
                {"name": "contact_family", "path": "name.family"},
                {"name": "relationship", "path": "relationship.first()"}
            ]},
            {"repeat": ["link"], "column": [{"name": "other", "path": "other.getReferenceKey(Patient)"}]}
        ]
    }))
    .unwrap();
    let types: Vec<Option<&str>> = v.columns().iter().map(|c| c.inferred_type()).collect();
    assert_eq!(
        types,
        [
            Some("id"),
            Some("boolean"),
            Some("date"),
            None, // boolean or dateTime
            Some("dateTime"),
            Some("string"),
            Some("CodeableConcept"),
            Some("id"),
        ]
    );
    assert!(v.warnings().is_empty(), "{:?}", v.warnings());

    // What the model makes certain is refused.
    let (_, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "birthDate + 1"}]}]),
    ));
    assert_eq!(msg, "operator '+' cannot be applied to date and integer");
    let (_, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "gender.getReferenceKey()"}]}]),
    ));
    assert_eq!(msg, "getReferenceKey() applies to a Reference, not code");
    let (el, msg) = refused(patient_view(
        json!([{"column": [{"name": "x", "path": "name", "type": "string"}]}]),
    ));
    assert_eq!(el, "select[0].column[0].type");
    assert!(msg.contains("gives HumanName"), "{msg}");

    // What is only probably wrong is a warning: the path gives nothing, or a single string
    // counts as true.
    let v = View::from_json(&patient_view(json!([{"column": [
        {"name": "x", "path": "name.first().famly"},
        {"name": "y", "path": "deceased.ofType(integer)"},
        {"name": "z", "path": "name.where(family).exists()"},
        {"name": "g", "path": "name.given"}
    ]}])))
    .unwrap();
    let w: Vec<String> = v.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        [
            "select[0].column[0].path: HumanName has no element 'famly' in FHIR R4: the path gives nothing",
            "select[0].column[1].path: ofType(integer) never matches here (the value is boolean or dateTime): the path gives nothing",
            "select[0].column[2].path: the argument of where() is string, not a Boolean: a single value counts as true",
            "select[0].column[3].path: an element on this path repeats, so it may give several values, but the column is not a collection: a resource that gives several fails (set \"collection\": true, or take one with first() or an indexer)",
        ]
    );
    assert_eq!(
        v.rows(
            &json!({"resourceType": "Patient", "name": [{"family": "F"}], "deceasedBoolean": true})
        )
        .unwrap(),
        vec![vec![Value::Null, Value::Null, json!(true), Value::Null]]
    );
}

#[test]
fn union_branches_may_infer_fitting_types() {
    // family is a string, gender a code: both text, accepted.
    let v = View::from_json(&patient_view(json!([{"unionAll": [
        {"forEach": "name", "column": [{"name": "v", "path": "family"}]},
        {"column": [{"name": "v", "path": "gender"}]}
    ]}])));
    assert!(v.is_ok(), "{v:?}");
    // A string and a boolean do not fit.
    let (el, msg) = refused(patient_view(json!([{"unionAll": [
        {"column": [{"name": "v", "path": "gender"}]},
        {"column": [{"name": "v", "path": "active"}]}
    ]}])));
    assert_eq!(el, "select[0].unionAll[1].column[0].type");
    assert_eq!(msg, "column 'v' is boolean here but code in unionAll[0]");
}

#[test]
fn decimal_precision_follows_the_json_parser() {
    let v = View::from_json(&json!({
        "resource": "Observation",
        "select": [{"column": [
            {"name": "v", "path": "value.ofType(Quantity).value"},
            {"name": "low", "path": "value.ofType(Quantity).value.lowBoundary()"}
        ]}]
    }))
    .unwrap();
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50}}"#,
    )
    .unwrap();
    let rows = v.rows(&obs).unwrap();
    // serde_json keeps the number text only with its arbitrary_precision feature; then the value
    // and its precision come out as written, otherwise as the nearest f64 (1.5, one decimal).
    let reread: String = serde_json::from_str::<Value>("1.50").unwrap().to_string();
    if reread.as_str() == "1.50" {
        assert_eq!(rows[0][0].to_string(), "1.50");
        assert_eq!(rows[0][1].to_string(), "1.495");
    } else {
        assert_eq!(rows[0][0].to_string(), "1.5");
        assert_eq!(rows[0][1].to_string(), "1.45");
    }
}

#[test]
fn a_view_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<View>();
    shareable::<ViewError>();
    shareable::<crate::EvalError>();
}
