use serde_json::{json, Value};

use super::eval::{eval, Constant, Env, Item};
use super::*;
use crate::json::Json;

fn constants() -> Vec<(String, &'static str)> {
    vec![
        ("use".to_string(), "code"),
        ("n".to_string(), "integer"),
        ("flag".to_string(), "boolean"),
    ]
}

fn compile_with(text: &str) -> Result<Compiled, String> {
    let names = constants();
    let scope = Scope {
        resource: Some("Patient"),
        constants: &names,
        is_resource_type: &crate::types::is_r4_resource_type,
    };
    compile(text, &scope, Some(&["Patient"]))
}

fn parse_err(text: &str) -> String {
    match compile_with(text) {
        Ok(c) => panic!("{text:?} parsed: {:?}", c.expr),
        Err(e) => e,
    }
}

fn static_type(text: &str) -> Option<&'static str> {
    compile_with(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .ty
}

/// Evaluates `text` on `resource` (the focus), with the constants use='official', n=1,
/// flag=true, and returns the items as JSON.
fn run(text: &str, resource: &Value) -> Result<Vec<Value>, String> {
    let c = compile_with(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let values = [
        Constant {
            value: Json::from(&json!("official")).into_owned(),
            ty: "code",
        },
        Constant {
            value: Json::from(&json!(1)).into_owned(),
            ty: "integer",
        },
        Constant {
            value: Json::from(&json!(true)).into_owned(),
            ty: "boolean",
        },
    ];
    let resource = Json::from(resource);
    let env = Env {
        resource: &resource,
        constants: &values,
        row_index: 7,
    };
    let focus = [Item::node(&resource)];
    let mut out = Vec::new();
    eval(&c.expr, &focus, &env, &mut out)?;
    Ok(out.iter().map(Item::to_json).collect())
}

fn one(text: &str, resource: &Value) -> Value {
    let mut v = run(text, resource).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(v.len() <= 1, "{text:?} gave {v:?}");
    v.pop().unwrap_or(Value::Null)
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "birthDate": "1970-06",
        "_birthDate": {"extension": [{"url": "http://x/precision", "valueCode": "month"}]},
        "name": [
            {"use": "official", "family": "Smith", "given": ["Ann", "Bea"]},
            {"use": "usual", "given": ["Cy"]}
        ],
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "managingOrganization": {"reference": "https://ex.org/fhir/Organization/o1/_history/2"},
        "generalPractitioner": [{"reference": "Practitioner/pr1"}, {"reference": "#c1"}],
        "extension": [{"url": "http://x/ext", "valueString": "v"}]
    })
}

#[test]
fn syntax_errors_say_where() {
    assert_eq!(
        parse_err("@@"),
        "invalid date/time literal at position 1 in FHIRPath"
    );
    assert!(parse_err("name.").contains("expected a name after '.'"));
    assert!(parse_err("name.where(use = 'x'").contains("expected ')'"));
    assert!(parse_err("'abc").contains("unterminated string"));
    assert!(parse_err("name # x").contains("unexpected character '#' at position 6"));
    assert!(parse_err("name family").contains("unexpected 'family' at position 6"));
    assert!(parse_err("(1 + 2").contains("expected ')'"));
    assert!(parse_err("a[0").contains("expected ']'"));
}

#[test]
fn unknown_and_unsupported_names_are_refused() {
    assert_eq!(
        parse_err("name.foo()"),
        "unknown or unsupported function foo() at position 6"
    );
    assert!(parse_err("name.family.matches('x')").contains("unsupported function matches()"));
    assert_eq!(
        parse_err("name.where(use = %wrong)"),
        "%wrong at position 18 is not a constant of this view"
    );
    assert!(parse_err("value.ofType(Quantty)").contains("unknown type 'Quantty'"));
    assert!(parse_err("subject.getReferenceKey(Patinet)").contains("unknown type 'Patinet'"));
    assert!(parse_err("subject.getReferenceKey(string)").contains("takes a resource type"));
    assert!(parse_err("$index").contains("$index at position 1 is not supported"));
}

#[test]
fn arity_is_checked() {
    assert_eq!(
        parse_err("name.first(1)"),
        "function first() at position 6 takes 0 argument(s), got 1"
    );
    assert!(parse_err("name.where()").contains("where() at position 6 takes 1 argument(s), got 0"));
    assert!(parse_err("name.join(',', ';')").contains("takes 0 to 1 argument(s), got 2"));
    assert!(parse_err("extension()").contains("takes 1 argument(s)"));
}

#[test]
fn known_types_are_checked() {
    assert!(parse_err("name.given.join(1)").contains("join() must be a String, not Integer"));
    assert!(parse_err("extension(true)").contains("extension() must be a String"));
    assert!(parse_err("name.where('x')").contains("where() must be a Boolean, not String"));
    assert!(parse_err("'a' * 2").contains("operator '*' cannot be applied to string and integer"));
    assert!(parse_err("1 + true").contains("operator '+' cannot be applied to integer and boolean"));
    assert!(parse_err("%use < 3").contains("operator '<' cannot be applied to code and integer"));
    assert!(parse_err("name['0']").contains("an index must be an Integer"));
    assert!(parse_err("-'a'").contains("unary '-' cannot be applied to string"));
    assert!(parse_err("'x'.lowBoundary()").contains("lowBoundary() applies to decimals"));
    assert!(parse_err("1.5.lowBoundary('2')").contains("must be an Integer"));
    // Unknown types (element paths) are not refused.
    assert!(compile_with("name.given.join(family)").is_ok());
    assert!(compile_with("value + 1").is_ok());
}

#[test]
fn static_types() {
    assert_eq!(static_type("name.exists()"), Some("boolean"));
    assert_eq!(static_type("a = b and c"), Some("boolean"));
    assert_eq!(static_type("name.given.join(' ')"), Some("string"));
    assert_eq!(static_type("value.ofType(Quantity)"), Some("Quantity"));
    assert_eq!(
        static_type("value.ofType(System.Integer).first()"),
        Some("integer")
    );
    assert_eq!(static_type("1 + 2"), Some("integer"));
    assert_eq!(static_type("1 + 2.5"), Some("decimal"));
    assert_eq!(static_type("4 / 2"), Some("decimal"));
    assert_eq!(static_type("%rowIndex"), Some("integer"));
    assert_eq!(static_type("%use"), Some("code"));
    assert_eq!(static_type("getResourceKey()"), Some("id"));
    assert_eq!(static_type("@2020-01-01"), Some("date"));
    assert_eq!(static_type("@2020-01-01T10:00Z"), Some("dateTime"));
    assert_eq!(static_type("@T10:00"), Some("time"));
    assert_eq!(static_type("name.family"), None);
    assert_eq!(static_type("Patient.name"), None);
}

#[test]
fn navigation_and_indexers() {
    let p = patient();
    assert_eq!(
        run("name.given", &p).unwrap(),
        vec![json!("Ann"), json!("Bea"), json!("Cy")]
    );
    assert_eq!(one("name[1].given", &p), json!("Cy"));
    assert_eq!(one("name[%n].given.first()", &p), json!("Cy"));
    assert_eq!(run("name[5]", &p).unwrap(), Vec::<Value>::new());
    assert_eq!(one("Patient.name.first().family", &p), json!("Smith"));
    assert_eq!(run("Observation.id", &p).unwrap(), Vec::<Value>::new());
    assert_eq!(one("`name`.first().`use`", &p), json!("official"));
    assert_eq!(
        run("name.where(use = %use).given", &p).unwrap(),
        vec![json!("Ann"), json!("Bea")]
    );
    assert_eq!(one("name.given.count()", &p), json!(3));
    assert_eq!(one("name.given.last()", &p), json!("Cy"));
    assert_eq!(one("%resource.id", &p), json!("p1"));
    assert_eq!(one("%rowIndex", &p), json!(7));
    // Comments and whitespace.
    assert_eq!(one("id // the id", &p), json!("p1"));
    assert_eq!(one("/* a */ id", &p), json!("p1"));
}

#[test]
fn choice_elements_and_of_type() {
    let p = patient();
    assert_eq!(one("deceased", &p), json!(false));
    assert_eq!(one("deceased.ofType(boolean)", &p), json!(false));
    assert_eq!(
        run("deceased.ofType(dateTime)", &p).unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(one("multipleBirth.ofType(integer)", &p), json!(2));
    assert_eq!(one("multipleBirth.ofType(System.Integer)", &p), json!(2));
    assert_eq!(one("multipleBirth.ofType(FHIR.integer)", &p), json!(2));
    let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 1.5, "unit": "mg"}});
    assert_eq!(one("value.ofType(Quantity).unit", &obs), json!("mg"));
    assert_eq!(
        run("value.ofType(string)", &obs).unwrap(),
        Vec::<Value>::new()
    );
    let code = json!({"resourceType": "Observation", "valueCode": "x"});
    // code is a specialisation of string.
    assert_eq!(one("value.ofType(string)", &code), json!("x"));
    assert_eq!(one("$this.ofType(Patient).id", &p), json!("p1"));
    assert_eq!(
        run("$this.ofType(Observation)", &p).unwrap(),
        Vec::<Value>::new()
    );
}

#[test]
fn extensions_including_on_primitives() {
    let p = patient();
    assert_eq!(one("extension('http://x/ext').value", &p), json!("v"));
    assert_eq!(
        one("extension('http://x/ext').value.ofType(string)", &p),
        json!("v")
    );
    assert_eq!(
        run("extension('http://x/none')", &p).unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(
        one("birthDate.extension('http://x/precision').value", &p),
        json!("month")
    );
    assert_eq!(
        one("birthDate.extension.url", &p),
        json!("http://x/precision")
    );
}

#[test]
fn boolean_logic_is_three_valued() {
    let p = patient();
    assert_eq!(one("active and true", &p), json!(true));
    assert_eq!(one("active and {}", &p), Value::Null);
    assert_eq!(one("{} and false", &p), json!(false));
    assert_eq!(one("{} or true", &p), json!(true));
    assert_eq!(one("{} or false", &p), Value::Null);
    assert_eq!(one("true xor true", &p), json!(false));
    assert_eq!(one("false implies {}", &p), json!(true));
    assert_eq!(one("(1 = 1).not()", &p), json!(false));
    assert_eq!(one("{}.not()", &p), Value::Null);
    assert_eq!(one("name.exists(use = 'usual')", &p), json!(true));
    assert_eq!(one("name.where(use = 'maiden').empty()", &p), json!(true));
    assert!(run("name.given and true", &p)
        .unwrap_err()
        .contains("expected a single boolean"));
}

#[test]
fn comparisons_and_arithmetic() {
    let p = patient();
    assert_eq!(one("1 = 1.0", &p), json!(true));
    assert_eq!(one("'a' != 'b'", &p), json!(true));
    assert_eq!(one("id = {}", &p), Value::Null);
    assert_eq!(one("name.given = name.given", &p), json!(true));
    assert_eq!(one("2 < 10", &p), json!(true));
    assert_eq!(one("'2' < '10'", &p), json!(false));
    assert_eq!(one("1.5 >= 1.50", &p), json!(true));
    assert_eq!(one("birthDate > '1969'", &p), json!(true));
    assert_eq!(one("0.1 + 0.2 = 0.3", &p), json!(true));
    assert_eq!(one("7 div 2", &p), json!(3));
    assert_eq!(one("7 mod 2", &p), json!(1));
    assert_eq!(one("3 / 2", &p), json!(1.5));
    assert_eq!(run("1 / 0", &p).unwrap(), Vec::<Value>::new());
    assert_eq!(one("-multipleBirth + 1", &p), json!(-1));
    assert_eq!(one("'a' + 'b'", &p), json!("ab"));
    assert_eq!(one("'a' & {} & 'c'", &p), json!("ac"));
    assert_eq!(one("(1 | 2 | 1).count()", &p), json!(2));
    assert!(run("name.given < 'z'", &p)
        .unwrap_err()
        .contains("needs single values"));
    // Types the model cannot pin down are checked when evaluated.
    assert!(run("(id | gender).first() < 3", &p)
        .unwrap_err()
        .contains("cannot compare"));
    assert!(run("(id | gender).first() * 3", &p)
        .unwrap_err()
        .contains("operator '*' cannot be applied"));
}

#[test]
fn join_and_strings() {
    let p = patient();
    assert_eq!(one("name.given.join(', ')", &p), json!("Ann, Bea, Cy"));
    assert_eq!(one("name.given.join()", &p), json!("AnnBeaCy"));
    assert_eq!(one("name.suffix.join(',')", &p), json!(""));
    assert_eq!(one("'tab\\there'", &p), json!("tab\there"));
    assert_eq!(one("'\\u00e9'", &p), json!("é"));
    assert_eq!(one("%ucum", &p), json!("http://unitsofmeasure.org"));
}

#[test]
fn keys() {
    let p = patient();
    assert_eq!(one("getResourceKey()", &p), json!("p1"));
    assert_eq!(
        one("managingOrganization.getReferenceKey()", &p),
        json!("o1")
    );
    assert_eq!(
        one("managingOrganization.getReferenceKey(Organization)", &p),
        json!("o1")
    );
    assert_eq!(
        run("managingOrganization.getReferenceKey(Patient)", &p).unwrap(),
        Vec::<Value>::new()
    );
    // The contained reference has no key.
    assert_eq!(
        run("generalPractitioner.getReferenceKey()", &p).unwrap(),
        vec![json!("pr1")]
    );
    // getResourceKey on something that is not a resource is empty.
    assert_eq!(
        run("name.getResourceKey()", &p).unwrap(),
        Vec::<Value>::new()
    );
}

#[test]
fn boundaries() {
    let p = patient();
    assert_eq!(one("birthDate.lowBoundary()", &p), json!("1970-06-01"));
    assert_eq!(one("birthDate.highBoundary()", &p), json!("1970-06-30"));
    assert_eq!(one("1.0.lowBoundary()", &p), json!(0.95));
    assert_eq!(one("1.587.highBoundary(2)", &p), json!(1.59));
    assert_eq!(one("@2010-10-10.lowBoundary()", &p), json!("2010-10-10"));
    assert_eq!(
        one("@2010-10-10T10:00.highBoundary()", &p),
        json!("2010-10-10T10:00:59.999-12:00")
    );
    assert_eq!(one("@T12:34.lowBoundary()", &p), json!("12:34:00.000"));
}

#[test]
fn dates_compare_with_precision_and_zones() {
    let p = patient();
    // birthDate is 1970-06 (month precision).
    assert_eq!(one("birthDate < @1971-01-01", &p), json!(true));
    assert_eq!(one("birthDate = @1970-06", &p), json!(true));
    assert_eq!(one("birthDate = @1970-06-15", &p), Value::Null);
    assert_eq!(one("birthDate >= @1970-06-15", &p), Value::Null);
    assert_eq!(
        one("@2020-01-01T10:00:00+02:00 = @2020-01-01T08:00:00Z", &p),
        json!(true)
    );
    assert_eq!(
        one("@2020-01-01T00:30:00+01:00 < @2019-12-31T23:45:00Z", &p),
        json!(true)
    );
    assert_eq!(one("@T10:00 > @T09:59:59", &p), json!(true));
    // Without a date/time type on either side, strings compare as text.
    assert_eq!(one("'2020-01' = '2020-01-01'", &p), json!(false));
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(parse_err(&deep).contains("nested more than 64 levels"));
    let minus = format!("{}1", "-".repeat(10_000));
    assert!(parse_err(&minus).contains("nested more than 64 levels"));
    let args = format!("{}{}", "where(".repeat(5_000), ")".repeat(5_000));
    assert!(parse_err(&args).contains("nested more than 64 levels"));
    // Reasonable nesting is fine.
    let ok = format!("{}1{}", "(".repeat(30), ")".repeat(30));
    assert!(compile_with(&ok).is_ok());
}

#[test]
fn items_carry_the_model_type() {
    let p = json!({"resourceType": "Patient", "birthDate": "1970-06", "gender": "female",
                   "deceasedDateTime": "2020-01-01T10:00:00Z"});
    // birthDate is a date by the model, so it compares as one even with an untyped string.
    assert_eq!(one("birthDate = '1970-06-15'", &p), Value::Null);
    assert_eq!(one("birthDate < '1971'", &p), json!(true));
    assert_eq!(one("gender.ofType(code)", &p), json!("female"));
    assert_eq!(one("gender.ofType(string)", &p), json!("female"));
    assert_eq!(run("gender.ofType(uri)", &p).unwrap(), Vec::<Value>::new());
    assert_eq!(
        one("deceased.ofType(dateTime) > birthDate", &p),
        json!(true)
    );
}

#[test]
fn odd_data_does_not_panic() {
    // Values that look almost like dates, with non-ASCII where digits belong.
    for v in [
        "2020-01-01T10:00+1é00",
        "2020-01-01T10:00+é:00",
        "2020-0é",
        "1é:00",
        "2020-01-01T",
        "",
        "T",
        "9999-99-99T99:99:99.999+99:99",
    ] {
        let r = json!({"resourceType": "Observation", "valueDateTime": v, "effectiveDateTime": v});
        for e in [
            "value.ofType(dateTime).lowBoundary()",
            "value.ofType(dateTime).highBoundary()",
            "value.ofType(dateTime) < @2020-01-01",
            "value.ofType(dateTime) = effective.ofType(dateTime)",
            "value.ofType(dateTime).lowBoundary(6)",
        ] {
            let _ = run(e, &r);
        }
    }
}

/// Random token soup: parsing never panics, and whatever parses evaluates without panicking.
#[test]
fn random_expressions_do_not_panic() {
    const PIECES: &[&str] = &[
        "name",
        "given",
        "family",
        ".",
        "(",
        ")",
        "[",
        "]",
        "0",
        "1",
        "2.5",
        "'a'",
        "'\\u00e9'",
        "where",
        "exists",
        "first",
        "join",
        "ofType",
        "string",
        "Quantity",
        "extension",
        "getReferenceKey",
        "Patient",
        "lowBoundary",
        "highBoundary",
        "and",
        "or",
        "xor",
        "implies",
        "not",
        "=",
        "!=",
        "<",
        ">=",
        "+",
        "-",
        "*",
        "/",
        "div",
        "mod",
        "&",
        "|",
        "{",
        "}",
        ",",
        "$this",
        "%resource",
        "%rowIndex",
        "%use",
        "%n",
        "@2020-01",
        "@T10:00",
        "birthDate",
        "deceased",
        "value",
        "count",
        "empty",
        "last",
        "`use`",
        " ",
        "'",
        "@",
        "%",
        "é",
        "true",
        "false",
        "managingOrganization",
    ];
    let p = patient();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut parsed = 0;
    for _ in 0..20_000 {
        let n = 1 + (next() % 12) as usize;
        let text: String = (0..n)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        if compile_with(&text).is_ok() {
            parsed += 1;
            let _ = run(&text, &p);
        }
    }
    assert!(parsed > 1000, "only {parsed} random expressions parsed");
}

#[test]
fn is_as_and_period_boundaries() {
    let p = json!({"resourceType": "Patient", "deceasedBoolean": true, "gender": "male",
                   "name": [{"family": "F", "period": {"start": "2001-02", "end": "2003-04-05T10:00:00Z"}}]});
    assert_eq!(one("deceased is boolean", &p), json!(true));
    assert_eq!(one("deceased is dateTime", &p), json!(false));
    assert_eq!(one("deceased.is(System.Boolean)", &p), json!(true));
    assert_eq!(one("(deceased as boolean) = true", &p), json!(true));
    assert_eq!(one("deceased as dateTime", &p), Value::Null);
    assert_eq!(one("deceased.as(boolean).not()", &p), json!(false));
    assert_eq!(one("gender is code and gender is string", &p), json!(true));
    assert_eq!(one("Patient.name.first() is HumanName", &p), json!(true));
    assert!(run("name.family.first() | 'x' is string", &p).is_ok());
    assert!(run("(name.family | 'x') is string", &p)
        .unwrap_err()
        .contains("'is' needs a single value"));
    assert!(parse_err("deceased is Bool").contains("unknown type 'Bool'"));
    assert_eq!(static_type("deceased is boolean"), Some("boolean"));
    assert_eq!(static_type("deceased as dateTime"), Some("dateTime"));

    assert_eq!(
        one("name.period.lowBoundary()", &p),
        json!("2001-02-01T00:00:00.000+14:00")
    );
    assert_eq!(
        one("name.period.highBoundary()", &p),
        json!("2003-04-05T10:00:00.999Z")
    );
    let c = compile_with("name.period.first().lowBoundary()").unwrap();
    assert_eq!(c.types, Some(vec!["dateTime"]));
}

#[test]
fn membership_and_equivalence() {
    let p = patient();
    assert_eq!(one("'Bea' in name.given", &p), json!(true));
    assert_eq!(one("'Zed' in name.given", &p), json!(false));
    assert_eq!(one("{} in name.given", &p), Value::Null);
    assert_eq!(one("name.given contains 'Cy'", &p), json!(true));
    assert_eq!(one("name.use contains 'old'", &p), json!(false));
    assert!(run("name.given in name.given", &p)
        .unwrap_err()
        .contains("needs single values"));
    assert_eq!(one("'Hello  World' ~ 'hello world'", &p), json!(true));
    assert_eq!(one("'a' !~ 'A'", &p), json!(false));
    assert_eq!(one("1.2 ~ 1.24", &p), json!(true));
    assert_eq!(one("1.2 ~ 1.26", &p), json!(false));
    assert_eq!(one("{} ~ {}", &p), json!(true));
    assert_eq!(one("{} ~ 'a'", &p), json!(false));
    assert_eq!(one("(1 | 2) ~ (2 | 1)", &p), json!(true));
    assert_eq!(one("@2020-01 ~ @2020-01-01", &p), json!(false));
    assert_eq!(static_type("'a' in name.given"), Some("boolean"));
}

#[test]
fn more_functions() {
    let p = patient();
    assert_eq!(one("iif(active, 'yes', 'no')", &p), json!("yes"));
    assert_eq!(
        one("iif(name.exists(use = 'maiden'), 'yes', 'no')", &p),
        json!("no")
    );
    assert_eq!(one("iif(false, 'yes')", &p), Value::Null);
    assert_eq!(
        run("name.select(given.first())", &p).unwrap(),
        vec![json!("Ann"), json!("Cy")]
    );
    assert_eq!(one("name.all(given.exists())", &p), json!(true));
    assert_eq!(one("name.all(family.exists())", &p), json!(false));
    assert_eq!(
        one("(1 | 2 | 3).select($this * 0).distinct().count()", &p),
        json!(1)
    );
    assert_eq!(
        run("name.given.tail()", &p).unwrap(),
        vec![json!("Bea"), json!("Cy")]
    );
    assert_eq!(run("name.given.skip(2)", &p).unwrap(), vec![json!("Cy")]);
    assert_eq!(run("name.given.take(1)", &p).unwrap(), vec![json!("Ann")]);
    assert!(run("name.given.single()", &p)
        .unwrap_err()
        .contains("single() got"));
    assert_eq!(one("id.hasValue()", &p), json!(true));
    assert_eq!(one("name.first().hasValue()", &p), json!(false));
    assert_eq!(one("multipleBirth.toString()", &p), json!("2"));
    assert_eq!(
        one("id.upper() + name.first().family.lower()", &p),
        json!("P1smith")
    );
    assert_eq!(one("'  x '.trim().length()", &p), json!(1));
    assert_eq!(one("name.first().family.substring(1, 3)", &p), json!("mit"));
    assert_eq!(one("name.first().family.substring(1)", &p), json!("mith"));
    assert_eq!(one("name.first().family.substring(9)", &p), Value::Null);
    assert_eq!(one("name.first().family.startsWith('Sm')", &p), json!(true));
    assert_eq!(one("name.first().family.endsWith('x')", &p), json!(false));
    assert_eq!(one("name.first().family.contains('mit')", &p), json!(true));
    assert_eq!(
        one("name.first().family.replace('S', 'Sch')", &p),
        json!("Schmith")
    );
    assert!(parse_err("active.upper()").contains("string functions apply to strings"));
    assert!(parse_err("name.first().family.substring('a')").contains("an Integer"));
    assert!(run("name.given.upper()", &p)
        .unwrap_err()
        .contains("single value"));
    assert_eq!(static_type("id.length()"), Some("integer"));
    assert_eq!(static_type("iif(true, 'a', 'b')"), Some("string"));
}
