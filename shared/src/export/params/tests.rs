use super::*;
use crate::export::job::ExportLevel;

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn additional() -> Vec<String> {
    vec!["Organization".into(), "Device".into()]
}

#[test]
fn a_comma_inside_a_type_filter_query_keeps_its_or_meaning() {
    assert_eq!(
        split_type_filters(
            "Observation?category=laboratory,vital-signs,Condition?clinical-status=active"
        ),
        vec![
            "Observation?category=laboratory,vital-signs",
            "Condition?clinical-status=active"
        ]
    );
    let p = parse_params(
        ExportLevel::System,
        &q(&[("_typeFilter", "Observation?category=laboratory,vital-signs")]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(
        p.type_filters,
        vec!["Observation?category=laboratory,vital-signs"]
    );
}

#[test]
fn allow_partial_manifests_is_accepted_and_ignored_even_when_strict() {
    let p = parse_params(
        ExportLevel::System,
        &q(&[("allowPartialManifests", "true")]),
        &[],
        false,
    )
    .unwrap();
    assert!(p.ignored.is_empty());
}

#[test]
fn requests_are_bounded_and_ignored_items_reported_once() {
    let many = "A,".repeat(500_000);
    let e = parse_params(ExportLevel::System, &q(&[("_type", &many)]), &[], true);
    assert!(matches!(e, Err(KickoffError::InvalidParameter(m)) if m.contains("more than")));
    let pairs: Vec<(String, String)> = (0..=MAX_PARAMETERS)
        .map(|i| ("_type".to_string(), format!("X{i}")))
        .collect();
    assert!(parse_params(ExportLevel::System, &pairs, &[], true).is_err());
    // 400 unknown types, a few repeated: each distinct message once, at most 20 + a summary.
    let types: Vec<String> = (0..400).map(|i| format!("Nope{}", i % 300)).collect();
    let p = parse_params(
        ExportLevel::System,
        &q(&[("_type", &types.join(",")), ("_type", "Patient")]),
        &[],
        true,
    )
    .unwrap();
    assert_eq!(p.ignored.len(), MAX_IGNORED_REPORTED + 1);
    assert!(p.ignored.last().unwrap().starts_with("280 more"));
}

#[test]
fn kickoff_accepts_all_three_output_format_aliases() {
    for f in OUTPUT_FORMATS {
        let p = parse_params(ExportLevel::System, &q(&[("_outputFormat", f)]), &[], false).unwrap();
        assert_eq!(p.output_format.as_str(), *f);
    }
    assert!(parse_params(
        ExportLevel::System,
        &q(&[("_outputFormat", "text/csv")]),
        &[],
        false,
    )
    .is_err());
}

#[test]
fn repeated_type_parameters_are_joined_and_deduplicated() {
    let p = parse_params(
        ExportLevel::System,
        &q(&[
            ("_type", "Patient,Observation"),
            ("_type", "Patient , Encounter"),
        ]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(
        p.types.unwrap(),
        vec!["Patient", "Observation", "Encounter"]
    );
}

#[test]
fn kickoff_rejects_unknown_type() {
    let e = parse_params(
        ExportLevel::System,
        &q(&[("_type", "Patient,Foo")]),
        &[],
        false,
    )
    .unwrap_err();
    assert!(matches!(e, KickoffError::InvalidParameter(m) if m.contains("Foo")));
}

#[test]
fn patient_level_rejects_types_it_cannot_export() {
    assert!(parse_params(
        ExportLevel::Patient,
        &q(&[("_type", "Practitioner")]),
        &additional(),
        false,
    )
    .is_err());
    assert!(parse_params(
        ExportLevel::Group,
        &q(&[("_type", "Device,Observation")]),
        &additional(),
        false,
    )
    .is_ok());
    assert!(parse_params(
        ExportLevel::System,
        &q(&[("_type", "Practitioner")]),
        &[],
        false
    )
    .is_ok());
}

#[test]
fn since_must_be_an_instant() {
    let p = parse_params(
        ExportLevel::System,
        &q(&[("_since", "2020-01-01T00:00:00Z")]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(p.since.unwrap().to_rfc3339(), "2020-01-01T00:00:00+00:00");
    assert!(parse_params(
        ExportLevel::System,
        &q(&[("_since", "2020-01-01")]),
        &[],
        false
    )
    .is_err());
}

#[test]
fn unknown_and_unsupported_parameters_are_refused() {
    assert!(matches!(
        parse_params(ExportLevel::System, &q(&[("_count", "10")]), &[], false),
        Err(KickoffError::InvalidParameter(_))
    ));
    assert!(matches!(
        parse_params(
            ExportLevel::System,
            &q(&[("organizeOutputBy", "Patient")]),
            &[],
            false
        ),
        Err(KickoffError::NotSupported(_))
    ));
    for (name, value) in [
        ("_typeFilter", "x"),
        ("_typeFilter", "Observation?_include=Observation:subject"),
        ("_typeFilter", "Observation?_sort=date"),
        ("_elements", "Patient.name.family"),
        ("_elements", "nonsense"),
    ] {
        assert!(
            matches!(
                parse_params(ExportLevel::System, &q(&[(name, value)]), &[], false),
                Err(KickoffError::InvalidParameter(_))
            ),
            "{name}={value}"
        );
    }
    assert!(matches!(
        parse_params(
            ExportLevel::System,
            &q(&[("includeAssociatedData", "_custom")]),
            &[],
            false
        ),
        Err(KickoffError::NotSupported(_))
    ));
    assert!(parse_params(ExportLevel::System, &q(&[("_type", "")]), &[], false).is_err());
}

#[test]
fn until_is_an_instant_after_since() {
    let p = parse_params(
        ExportLevel::System,
        &q(&[
            ("_since", "2020-01-01T00:00:00Z"),
            ("_until", "2021-01-01T00:00:00Z"),
        ]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(
        p.until.map(|t| t.to_rfc3339()),
        Some("2021-01-01T00:00:00+00:00".into())
    );
    for until in ["2019-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2021-01-01"] {
        assert!(parse_params(
            ExportLevel::System,
            &q(&[("_since", "2020-01-01T00:00:00Z"), ("_until", until)]),
            &[],
            false,
        )
        .is_err());
    }
}

#[test]
fn type_filter_elements_and_associated_data_are_kept_in_request_order() {
    let p = parse_params(
        ExportLevel::Patient,
        &q(&[
            (
                "_typeFilter",
                "Observation?category=laboratory,MedicationRequest?status=active",
            ),
            (
                "_typeFilter",
                "Observation?category=vital-signs%2Csocial-history",
            ),
            ("_elements", "id,Patient.name"),
            ("includeAssociatedData", "LatestProvenanceResources"),
        ]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(
        p.type_filters,
        [
            "Observation?category=laboratory",
            "MedicationRequest?status=active",
            "Observation?category=vital-signs%2Csocial-history"
        ]
    );
    assert_eq!(p.elements, ["id", "Patient.name"]);
    assert_eq!(
        p.include_associated_data,
        [AssociatedData::LatestProvenance]
    );
}

#[test]
fn lenient_handling_ignores_and_reports_instead_of_refusing() {
    let p = parse_params(
        ExportLevel::System,
        &q(&[
            ("_type", "Patient,Foo"),
            ("_count", "5"),
            ("_typeFilter", "x"),
        ]),
        &[],
        true,
    )
    .unwrap();
    assert_eq!(p.types.unwrap(), vec!["Patient"]);
    assert_eq!(p.ignored.len(), 3);
    assert!(p.ignored[0].contains("Foo"));
    let all_ignored =
        parse_params(ExportLevel::System, &q(&[("_type", "Foo")]), &[], true).unwrap();
    assert_eq!(all_ignored.types, None);
}

#[test]
fn patient_parameter_takes_references_or_ids_at_patient_and_group_level() {
    let p = parse_params(
        ExportLevel::Group,
        &q(&[("patient", "Patient/a,b"), ("patient", "Patient/a")]),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(p.patients.unwrap(), vec!["a", "b"]);
    assert!(parse_params(
        ExportLevel::System,
        &q(&[("patient", "Patient/a")]),
        &[],
        false
    )
    .is_err());
    assert!(parse_params(
        ExportLevel::Patient,
        &q(&[("patient", "Patient/../x")]),
        &[],
        false
    )
    .is_err());
}

#[test]
fn parameters_bodies_give_name_value_pairs() {
    let body = br#"{"resourceType":"Parameters","parameter":[
        {"name":"_type","valueString":"Patient,Observation"},
        {"name":"_since","valueInstant":"2020-01-01T00:00:00Z"},
        {"name":"patient","valueReference":{"reference":"Patient/p1"}},
        {"name":"_outputFormat","valueString":"ndjson"}]}"#;
    let pairs = parameters_body(body).unwrap();
    assert_eq!(pairs.len(), 4);
    assert_eq!(pairs[2], ("patient".to_string(), "Patient/p1".to_string()));
    assert!(parameters_body(b"{\"resourceType\":\"Patient\"}").is_err());
    assert!(parameters_body(b"not json").is_err());
    assert!(parameters_body(
        br#"{"resourceType":"Parameters","parameter":[{"name":"x","valueInteger":1}]}"#
    )
    .is_err());
    assert_eq!(parameters_body(b"").unwrap(), vec![]);
}

/// Every parameter as the IG's OperationDefinitions type it (export, patient-export,
/// group-export): `allowPartialManifests` is a boolean, which bulk-data-client `--post` sends
/// as valueBoolean.
#[test]
fn parameters_bodies_take_every_parameter_in_its_ig_type() {
    let body = br#"{"resourceType":"Parameters","parameter":[
        {"name":"_outputFormat","valueString":"ndjson"},
        {"name":"_since","valueInstant":"2020-01-01T00:00:00Z"},
        {"name":"_until","valueInstant":"2021-01-01T00:00:00Z"},
        {"name":"_type","valueString":"Patient,Observation"},
        {"name":"_elements","valueString":"id"},
        {"name":"patient","valueReference":{"reference":"Patient/p1"}},
        {"name":"includeAssociatedData","valueCode":"LatestProvenanceResources"},
        {"name":"_typeFilter","valueString":"Observation?status=final"},
        {"name":"organizeOutputBy","valueString":"Patient"},
        {"name":"allowPartialManifests","valueBoolean":true}]}"#;
    let pairs = parameters_body(body).unwrap();
    assert_eq!(pairs.len(), 10);
    assert_eq!(
        pairs[9],
        ("allowPartialManifests".to_string(), "true".to_string())
    );
    for level in [ExportLevel::Patient, ExportLevel::Group] {
        let p = parse_params(level, &pairs, &[], false).unwrap();
        assert!(p.ignored.is_empty());
    }
    let f = br#"{"resourceType":"Parameters","parameter":[
        {"name":"allowPartialManifests","valueBoolean":false}]}"#;
    let pairs = parameters_body(f).unwrap();
    assert!(parse_params(ExportLevel::System, &pairs, &[], false).is_ok());
    // A non-boolean allowPartialManifests is refused, or ignored and reported when lenient.
    let odd = q(&[("allowPartialManifests", "maybe")]);
    assert!(parse_params(ExportLevel::System, &odd, &[], false).is_err());
    let p = parse_params(ExportLevel::System, &odd, &[], true).unwrap();
    assert_eq!(p.ignored.len(), 1);
}

/// Postgres refuses U+0000 in stored text and jsonb: a NUL in any parameter (its value, or the
/// name of an unknown one, which lenient handling would store in error[]) is a 400 naming it,
/// strict or lenient.
#[test]
fn a_nul_in_any_parameter_is_refused_even_when_lenient() {
    for (name, value) in [
        ("_typeFilter", "Observation?code=a\0b"),
        ("_type", "Patient\0"),
        ("_elements", "id\0"),
        ("_since", "2020-01-01T00:00:00Z\0"),
        ("patient", "Patient/a\0"),
        ("includeAssociatedData", "\0"),
        ("organizeOutputBy", "Patient\0"),
        ("allowPartialManifests", "true\0"),
        ("_outputFormat", "ndjson\0"),
        ("unknown\0", "x"),
    ] {
        for lenient in [false, true] {
            let e = parse_params(ExportLevel::Patient, &q(&[(name, value)]), &[], lenient)
                .expect_err(name);
            let KickoffError::InvalidParameter(m) = e else {
                panic!("{name}: {e:?}");
            };
            assert!(m.contains("NUL"), "{name}: {m}");
            assert!(
                m.starts_with(&name.escape_debug().to_string()),
                "{name}: {m}"
            );
        }
    }
}

#[test]
fn prefer_is_parsed_as_a_list() {
    assert!(
        check_headers(
            Some("application/fhir+json"),
            Some("respond-async, handling=lenient")
        )
        .unwrap()
        .lenient
    );
    assert!(!check_headers(None, Some("respond-async")).unwrap().lenient);
    assert!(check_headers(None, Some("handling=lenient,respond-async")).is_ok());
    assert!(matches!(
        check_headers(Some("application/fhir+json"), None),
        Err(KickoffError::InvalidHeader(_))
    ));
    assert!(matches!(
        check_headers(Some("text/html"), Some("respond-async")),
        Err(KickoffError::NotAcceptable(_))
    ));
}

#[test]
fn fhir_ids_are_validated() {
    assert!(is_fhir_id("d9f31445-f448-48c0-af57-295c005e07df"));
    assert!(!is_fhir_id("../x"));
    assert!(!is_fhir_id(""));
    assert!(!is_fhir_id(&"a".repeat(65)));
}
