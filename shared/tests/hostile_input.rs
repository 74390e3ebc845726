//! Property tests: the parsers that see client input (kick-off parameters, Parameters bodies,
//! headers, `_typeFilter` queries, `_elements`, scopes, bearer tokens) never panic, whatever
//! they are given, and what they accept is within bounds. Runs in `cargo test` (and so in CI)
//! with a fixed number of cases (PROPTEST_CASES overrides it).

use proptest::prelude::*;
use serde_json::Value;
use shared::auth::{scopes, verify_access_token};
use shared::export::params::{check_headers, parameters_body, parse_params};
use shared::export::ExportLevel;
use shared::fhir::elements::ElementsFilter;
use shared::fhir::resource_types::is_resource_type;
use shared::fhir::search::{matches_any, parse_query, TypeFilters};

const NAMES: &[&str] = &[
    "_type",
    "_since",
    "_until",
    "_outputFormat",
    "patient",
    "_typeFilter",
    "_elements",
    "includeAssociatedData",
    "organizeOutputBy",
    "_count",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(NAMES).prop_map(str::to_string),
        "[_a-zA-Z]{1,12}",
    ]
}

/// Values mixing FHIR-looking fragments with arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z]{1,12}(,[A-Za-z]{1,12}){0,3}",
        "[A-Za-z]{1,12}\\?[a-z_:-]{1,10}=[a-z0-9|:/%.,-]{0,20}(&[a-z_:-]{1,10}=[a-z0-9|%.,-]{0,10}){0,2}",
        "[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9:.]{0,12}(Z|[+-][0-9:]{0,5})?)?)?)?",
        "(\\.\\./|%2e|%00|'|;|--|\\\\){1,6}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[a-zA-Z0-9 :/|.-]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    proptest::sample::select(
                        &[
                            "code",
                            "coding",
                            "system",
                            "value",
                            "status",
                            "category",
                            "subject",
                            "reference",
                            "start",
                            "end",
                            "effectiveDateTime",
                            "valueQuantity",
                            "name",
                            "family",
                            "meta",
                            "lastUpdated",
                            "id",
                            "event",
                        ][..]
                    )
                    .prop_map(str::to_string),
                    "[a-zA-Z]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn kickoff_parameters_never_panic_and_accept_only_valid_types(
        pairs in prop::collection::vec((name(), value()), 0..6),
        level in prop_oneof![Just(ExportLevel::System), Just(ExportLevel::Patient), Just(ExportLevel::Group)],
        lenient in any::<bool>(),
    ) {
        if let Ok(p) = parse_params(level, &pairs, &["Organization".to_string()], lenient) {
            for t in p.types.iter().flatten() {
                prop_assert!(is_resource_type(t));
            }
            for q in &p.type_filters {
                prop_assert!(parse_query(q).is_ok());
            }
            for e in &p.elements {
                prop_assert!(ElementsFilter::check(e).is_ok());
            }
            if let (Some(s), Some(u)) = (p.since, p.until) {
                prop_assert!(u > s);
            }
        }
    }

    #[test]
    fn parameters_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parameters_body(&body);
    }

    #[test]
    fn parameters_resources_never_panic(v in json_value()) {
        let mut v = v;
        if let Value::Object(m) = &mut v {
            m.insert("resourceType".into(), Value::String("Parameters".into()));
        }
        let _ = parameters_body(v.to_string().as_bytes());
    }

    #[test]
    fn headers_never_panic(accept in any::<Option<String>>(), prefer in any::<Option<String>>()) {
        let _ = check_headers(accept.as_deref(), prefer.as_deref());
    }

    #[test]
    fn type_filters_never_panic_on_any_query_or_resource(q in value(), resource in json_value()) {
        if let Ok(query) = parse_query(&q) {
            let _ = matches_any(&[query], &resource);
        }
        let _ = TypeFilters::parse(&[q]);
    }

    #[test]
    fn elements_never_panic(e in value()) {
        let _ = ElementsFilter::check(&e);
    }

    #[test]
    fn granted_scopes_never_exceed_the_registration(requested in value(), registered in value()) {
        let granted = scopes::grant(&requested, &registered);
        let allowed = scopes::types_of(&registered);
        if let scopes::TypeSet::Only(types) = scopes::types_of(&granted) {
            for t in types {
                prop_assert!(allowed.allows(&t));
            }
        } else {
            prop_assert_eq!(allowed, scopes::TypeSet::All);
        }
    }

    #[test]
    fn arbitrary_bearer_tokens_are_never_accepted(token in any::<String>()) {
        prop_assert!(verify_access_token(b"0123456789abcdef0123456789abcdef", "http://h", &token).is_err());
    }
}
