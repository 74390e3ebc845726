use super::syntax::*;
use super::*;
use serde_json::json;

fn obs() -> Value {
    json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "meta": {"lastUpdated": "2021-06-01T10:00:00Z", "tag": [{"system": "urn:t", "code": "x"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}], "text": "Glucose"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-03-15T08:30:00+00:00",
        "valueQuantity": {"value": 105.2, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    })
}

fn m(q: &str, r: &Value) -> bool {
    parse_query(q).unwrap().matches(r)
}

#[test]
fn token_forms() {
    let o = obs();
    assert!(m("Observation?category=laboratory", &o));
    assert!(m("Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", &o));
    assert!(!m("Observation?category=urn:other|laboratory", &o));
    assert!(m("Observation?category=vital-signs,laboratory", &o));
    assert!(!m("Observation?category=vital-signs", &o));
    assert!(m("Observation?code=http://loinc.org|", &o));
    assert!(!m("Observation?code=|2339-0", &o));
    assert!(m("Observation?status=final", &o));
    assert!(m("Observation?status:not=amended", &o));
    assert!(!m("Observation?status:not=final", &o));
    assert!(m("Observation?code:text=gluc", &o));
    assert!(m("Observation?_tag=urn:t|x", &o));
    assert!(m("Observation?_id=o1", &o));
}

#[test]
fn commas_escaped_in_the_url_are_or_values() {
    // `%2C` is how a comma inside one _typeFilter query reaches us.
    let q = "Observation?category=laboratory%2Cvital-signs";
    assert!(m(q, &obs()));
}

#[test]
fn escaped_separators_are_literal() {
    assert_eq!(split_escaped(r"a\,b,c", ','), [r"a\,b", "c"]);
    assert_eq!(split_escaped(r"s\|x|c", '|'), [r"s\|x", "c"]);
    assert_eq!(unescape(r"a\,b\\c\|d"), r"a,b\c|d");
    let p = json!({"resourceType": "Patient", "name": [{"family": "a,b"}]});
    assert!(m(r"Patient?family=a\,b", &p));
    assert!(m("Patient?family=zz,a", &p), "an unescaped comma ORs");
}

#[test]
fn parameters_are_anded() {
    let o = obs();
    assert!(m("Observation?category=laboratory&status=final", &o));
    assert!(!m("Observation?category=laboratory&status=preliminary", &o));
}

#[test]
fn reference_forms() {
    let o = obs();
    assert!(m("Observation?subject=Patient/p1", &o));
    assert!(m("Observation?patient=p1", &o));
    assert!(m("Observation?subject:Patient=p1", &o));
    assert!(!m("Observation?subject=Patient/p2", &o));
    assert!(!m("Observation?subject:Group=p1", &o));
}

#[test]
fn date_prefixes_and_precision() {
    let o = obs();
    assert!(m("Observation?date=2020", &o));
    assert!(m("Observation?date=2020-03", &o));
    assert!(m("Observation?date=2020-03-15", &o));
    assert!(!m("Observation?date=2020-03-16", &o));
    assert!(m("Observation?date=gt2020-01-01", &o));
    assert!(!m("Observation?date=gt2020-03-15", &o));
    assert!(m("Observation?date=ge2020-03-15", &o));
    assert!(m("Observation?date=lt2021", &o));
    assert!(m("Observation?date=le2020-03-15", &o));
    assert!(m("Observation?date=sa2019", &o));
    assert!(m("Observation?date=eb2021-01-01", &o));
    assert!(m("Observation?date=ne2019", &o));
    assert!(m("Observation?_lastUpdated=gt2021-05-31T00:00:00Z", &o));
    assert!(!m("Observation?_lastUpdated=gt2021-06-01T10:00:00Z", &o));
    assert!(m("Observation?date=2020-03-15T08:30:00Z", &o));
}

#[test]
fn periods_are_ranges() {
    let e = json!({"resourceType": "Encounter", "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-03T10:00:00Z"}});
    assert!(m("Encounter?date=gt2020-01-02", &e));
    assert!(m("Encounter?date=lt2020-01-02", &e));
    assert!(!m("Encounter?date=2020-01-02", &e));
    assert!(m("Encounter?date=2020-01", &e));
    let open = json!({"resourceType": "Encounter", "period": {"start": "2020-01-01T10:00:00Z"}});
    assert!(m("Encounter?date=gt2030", &open));
}

#[test]
fn quantity_and_number() {
    let o = obs();
    assert!(m("Observation?value-quantity=gt100", &o));
    assert!(m("Observation?value-quantity=105.2", &o));
    assert!(m("Observation?value-quantity=105", &o));
    assert!(!m("Observation?value-quantity=106", &o));
    assert!(m(
        "Observation?value-quantity=lt200|http://unitsofmeasure.org|mg/dL",
        &o
    ));
    assert!(!m(
        "Observation?value-quantity=lt200|http://unitsofmeasure.org|mmol/L",
        &o
    ));
    assert!(m("Observation?value-quantity=le105.2||mg/dL", &o));
    let r = json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.25}]});
    assert!(m("RiskAssessment?probability=gt0.2", &r));
    assert!(!m("RiskAssessment?probability=gt0.3", &r));
}

#[test]
fn strings_are_prefix_and_accent_insensitive() {
    let p = json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Zoë"]}],
                   "address": [{"city": "Boston"}]});
    assert!(m("Patient?family=muller", &p));
    assert!(m("Patient?name=zoe", &p));
    assert!(m("Patient?address-city=bos", &p));
    assert!(!m("Patient?address-city=ton", &p));
    assert!(m("Patient?address-city:contains=ton", &p));
    assert!(m("Patient?family:exact=Müller", &p));
    assert!(!m("Patient?family:exact=muller", &p));
    assert!(m("Patient?gender:missing=true", &p));
    assert!(!m("Patient?family:missing=true", &p));
}

#[test]
fn uri_modifiers() {
    let v = json!({"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/a"});
    assert!(m("ValueSet?url=http://example.org/fhir/ValueSet/a", &v));
    assert!(!m("ValueSet?url=http://example.org/fhir", &v));
    assert!(m("ValueSet?url:below=http://example.org/fhir", &v));
}

#[test]
fn refusals_say_why() {
    for (q, want) in [
        (
            "Observation?_include=Observation:subject",
            "result parameter",
        ),
        ("Observation?_sort=date", "result parameter"),
        ("Observation?subject.name=x", "chained"),
        ("Observation?foo=1", "not a search parameter of Observation"),
        ("Observation?code-value-quantity=x", "not supported"),
        ("Observation?code:below=x", "modifier :below"),
        ("Observation?date=yesterday", "is not a date"),
        ("Observation?value-quantity=abc", "is not a quantity"),
        ("Foo?x=1", "not a FHIR R4 resource type"),
        ("Observation", "Type?name=value"),
        ("Observation?", "no search parameter"),
    ] {
        let e = parse_query(q).unwrap_err();
        assert!(e.0.contains(want), "{q}: {e}");
    }
}

#[test]
fn queries_for_one_type_are_ored() {
    let f = TypeFilters::parse(&[
        "Observation?category=vital-signs",
        "Observation?status=final",
        "Condition?clinical-status=active",
    ])
    .unwrap();
    let qs = f.for_type("Observation");
    assert_eq!(qs.len(), 2);
    assert!(matches_any(&qs, &obs()));
    assert!(matches_any(&f.for_type("Patient"), &obs()));
}
