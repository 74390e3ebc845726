use serde_json::json;

use super::*;

fn patients_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patient_demographics",
        "resource": "Patient",
        "status": "active",
        "select": [{
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "gender", "path": "gender"},
                {"name": "birth_date", "path": "birthDate"}
            ]
        }]
    })
}

fn body(params: Value) -> Vec<u8> {
    json!({"resourceType": "Parameters", "parameter": params})
        .to_string()
        .into_bytes()
}

fn view_param(name: Option<&str>, view: Value) -> Value {
    let mut parts = vec![json!({"name": "viewResource", "resource": view})];
    if let Some(n) = name {
        parts.push(json!({"name": "name", "valueString": n}));
    }
    json!({"name": "view", "part": parts})
}

fn refused(params: Value) -> String {
    match parse_kickoff(&body(params), &[], &StoredViews::new()) {
        Err(e) => e.to_string(),
        Ok(k) => panic!("accepted: {:?}", k.params),
    }
}

#[test]
fn a_kickoff_becomes_the_parameters_of_an_export_of_the_views_types() {
    let mut obs = patients_view();
    obs["resource"] = json!("Observation");
    obs["name"] = json!("obs");
    let k = parse_kickoff(
        &body(json!([
            view_param(None, patients_view()),
            view_param(Some("observations"), obs),
            {"name": "_format", "valueCode": "text/csv"},
            {"name": "header", "valueBoolean": false},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"},
            {"name": "clientTrackingId", "valueString": "run-7"}
        ])),
        &[],
        &StoredViews::new(),
    )
    .expect("accepted");
    assert_eq!(k.level, ExportLevel::System);
    assert_eq!(k.group_id, None);
    let p = k.params;
    assert_eq!(p.types, Some(vec!["Patient".into(), "Observation".into()]));
    let names: Vec<&str> = p.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["patient_demographics", "observations"]);
    assert_eq!(
        p.view_format,
        Some(ViewFormat {
            code: "csv".into(),
            header: false
        })
    );
    assert!(p.since.is_some());
    assert_eq!(p.client_tracking_id.as_deref(), Some("run-7"));
    // Stored and read back by the exporter unchanged.
    let stored = serde_json::to_string(&p).expect("stored");
    let back: ExportParams = serde_json::from_str(&stored).expect("read back");
    assert_eq!(back, p);
}

#[test]
fn group_and_patient_choose_the_level() {
    let k = parse_kickoff(
        &body(json!([
            view_param(None, patients_view()),
            {"name": "group", "valueReference": {"reference": "Group/g1"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}}
        ])),
        &[],
        &StoredViews::new(),
    )
    .expect("accepted");
    assert_eq!(k.level, ExportLevel::Group);
    assert_eq!(k.group_id.as_deref(), Some("g1"));
    assert_eq!(k.params.patients, Some(vec!["p1".to_string()]));
    let k = parse_kickoff(
        &body(json!([
            view_param(None, patients_view()),
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}}
        ])),
        &[],
        &StoredViews::new(),
    )
    .expect("accepted");
    assert_eq!(k.level, ExportLevel::Patient);
    // The default format is ndjson.
    assert_eq!(k.params.view_format.map(|f| f.code), Some("ndjson".into()));
}

#[test]
fn a_view_that_cannot_run_is_refused_naming_the_element() {
    let mut v = patients_view();
    v["select"][0]["column"][1]["path"] = json!("gender.frobnicate()");
    let m = refused(json!([view_param(None, v)]));
    assert!(
        m.starts_with("view[0].viewResource: ViewDefinition.select[0].column[1].path"),
        "{m}"
    );
    assert!(m.contains("frobnicate"), "{m}");

    let mut v = patients_view();
    v["resource"] = json!("Patiënt");
    assert!(refused(json!([view_param(None, v)])).contains("view[0].viewResource"));

    let m = refused(json!([
        view_param(None, patients_view()),
        view_param(None, patients_view())
    ]));
    assert!(m.contains("already another view's"), "{m}");
    let m = refused(json!([view_param(Some("bad name"), patients_view())]));
    assert!(m.contains("is not a view name"), "{m}");
    let m = refused(json!([{"name": "_format", "valueCode": "csv"}]));
    assert!(m.contains("at least one view"), "{m}");
    let m = refused(
        json!([view_param(None, patients_view()), {"name": "_format", "valueCode": "xlsx"}]),
    );
    assert!(m.contains("not supported"), "{m}");
    let m = refused(
        json!([view_param(None, patients_view()), {"name": "_type", "valueCode": "Patient"}]),
    );
    assert!(
        m.contains("not a parameter of $viewdefinition-export"),
        "{m}"
    );
    let mut v = patients_view();
    v["resourceType"] = json!("Basic");
    assert!(refused(json!([view_param(None, v)])).contains("resourceType must be ViewDefinition"));
    let m = refused(
        json!([{"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/x"}}]}]),
    );
    assert!(m.contains("send the view inline"), "{m}");
}

#[test]
fn format_codes_and_media_types() {
    assert_eq!(format_code("NDJSON"), Some("ndjson"));
    assert_eq!(format_code("application/x-ndjson"), Some("ndjson"));
    assert_eq!(format_code("text/csv; charset=utf-8"), Some("csv"));
    assert_eq!(
        format_code("application/vnd.apache.parquet"),
        Some("parquet")
    );
    assert_eq!(format_code("json"), None);
}

#[test]
fn a_view_reference_names_a_stored_view_definition() {
    let mut stored = StoredViews::new();
    stored.insert("demographics".into(), patients_view());
    let reference = |r: &str| {
        json!([{"name": "view", "part": [
            {"name": "viewReference", "valueReference": {"reference": r}},
            {"name": "name", "valueString": "people"}
        ]}])
    };
    for r in [
        "ViewDefinition/demographics",
        "https://example.org/fhir/ViewDefinition/demographics",
    ] {
        let k = parse_kickoff(&body(reference(r)), &[], &stored).expect("accepted");
        assert_eq!(k.params.views[0].name, "people");
        assert_eq!(k.params.views[0].definition, patients_view());
        assert_eq!(k.params.types, Some(vec!["Patient".to_string()]));
    }
    assert_eq!(
        referenced_views(&body(reference("ViewDefinition/demographics"))),
        ["demographics"]
    );
    let m = match parse_kickoff(&body(reference("ViewDefinition/other")), &[], &stored) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unknown view was accepted"),
    };
    assert!(
        m.contains("ViewDefinition/other is not stored on this server"),
        "{m}"
    );
    let m = match parse_kickoff(&body(reference("Patient/demographics")), &[], &stored) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a Patient reference was accepted"),
    };
    assert!(m.contains("is not a reference to a ViewDefinition"), "{m}");
}
