//! The official SQL on FHIR v2 test suite (tests/suite, pinned: see tests/suite/PINNED).
//!
//! Every test of every file is run and its outcome asserted, as the suite's reference runner
//! compares them: rows are compared without regard to order (as multisets of rows, a row being
//! a map from column name to value; numbers compare by value), `expectColumns` must equal the
//! view's column names in order, `expectCount` the number of rows, and `expectError` must be
//! an error when the ViewDefinition is read or when it is applied to the test's resources.
//! Tests listed in SKIPPED are not run; everything else must pass.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sof::{Projection, View, ViewDefinition};

/// Tests not taken, with the reason: (file, test title, reason). Every entry must name an
/// existing test, so that the list cannot go stale silently.
const SKIPPED: &[(&str, &str, &str)] = &[];

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/suite")
}

fn suite_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir())
        .expect("tests/suite exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// JSON equality with numbers compared by value (`5` = `5.0`) and object keys unordered.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn same_rows(actual: &[Map<String, Value>], expected: &[Value]) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "{} rows, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let mut used = vec![false; actual.len()];
    for e in expected {
        let e_obj = Value::Object(e.as_object().cloned().unwrap_or_default());
        let found = actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && same(&Value::Object((*a).clone()), &e_obj));
        match found {
            Some((i, _)) => used[i] = true,
            None => return Err(format!("expected row {e} not found")),
        }
    }
    Ok(())
}

enum Outcome {
    Pass,
    Fail(String),
}

/// How `run_test` hands the resources to the view.
#[derive(Clone, Copy, PartialEq)]
enum Input {
    /// As the suite gives them.
    Whole,
    /// Re-read through the view's [`Projection`] (the exporter's parse).
    Projected,
}

fn run_test(test: &Value, resources: &[Value], input: Input) -> Outcome {
    let view_json = &test["view"];
    let expect_error = test.get("expectError").and_then(Value::as_bool) == Some(true);
    let view: View = match ViewDefinition::from_json(view_json) {
        Ok(v) => v,
        Err(e) if expect_error => {
            // The error must say where the problem is (or be about the whole document).
            assert!(!e.message().is_empty());
            return Outcome::Pass;
        }
        Err(e) => return Outcome::Fail(format!("refused: {e}")),
    };
    for w in view.warnings() {
        println!("  warning: {}: {w}", test["title"]);
    }
    let names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
    let projection = Projection::of([&view]);
    let mut rows = Vec::new();
    for r in resources {
        let result = if input == Input::Projected {
            // As the exporter reads stored resources: from their text, through the projection.
            let text = serde_json::to_vec(r).expect("resource as JSON");
            view.json_rows(&projection.parse(&text).expect("projected parse"))
        } else {
            view.rows(r)
        };
        match result {
            Ok(rs) => {
                for row in rs {
                    assert_eq!(row.len(), names.len(), "row width");
                    rows.push(
                        names
                            .iter()
                            .map(|n| n.to_string())
                            .zip(row)
                            .collect::<Map<String, Value>>(),
                    );
                }
            }
            Err(_) if expect_error => return Outcome::Pass,
            Err(e) => return Outcome::Fail(format!("evaluation error: {e}")),
        }
    }
    if expect_error {
        return Outcome::Fail(format!("expected an error, got {} rows", rows.len()));
    }
    if let Some(cols) = test.get("expectColumns").and_then(Value::as_array) {
        let want: Vec<&str> = cols.iter().filter_map(Value::as_str).collect();
        if want != names {
            return Outcome::Fail(format!("columns {names:?}, expected {want:?}"));
        }
    }
    if let Some(n) = test.get("expectCount").and_then(Value::as_u64) {
        if rows.len() as u64 != n {
            return Outcome::Fail(format!("{} rows, expected {n}", rows.len()));
        }
    }
    if let Some(expect) = test.get("expect").and_then(Value::as_array) {
        if let Err(m) = same_rows(&rows, expect) {
            return Outcome::Fail(format!("{m}; got {}", Value::from(rows)));
        }
    } else if test.get("expectCount").is_none() {
        return Outcome::Fail("the test has no expectation".to_string());
    }
    Outcome::Pass
}

#[test]
fn official_suite() {
    let files = suite_files();
    assert!(files.len() >= 20, "the suite files are missing");
    let (mut passed, mut skipped, mut total) = (0usize, 0usize, 0usize);
    // Tests whose view parses only some elements of a resource.
    let mut projected = 0usize;
    let mut failures = Vec::new();
    let mut seen_skips = vec![false; SKIPPED.len()];
    let mut experimental_passed = 0usize;
    // expectError tests the view is refused for when read, and those that fail only on data.
    let (mut refused_when_read, mut failed_on_data) = (Vec::new(), Vec::new());
    for path in &files {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read suite file");
        let doc: Value = serde_json::from_str(&text).expect("suite file is JSON");
        let resources = doc["resources"].as_array().cloned().unwrap_or_default();
        let tests = doc["tests"].as_array().expect("tests array");
        for test in tests {
            total += 1;
            let title = test["title"].as_str().unwrap_or_default();
            if let Some(i) = SKIPPED
                .iter()
                .position(|(f, t, _)| *f == file && *t == title)
            {
                seen_skips[i] = true;
                skipped += 1;
                continue;
            }
            let experimental = test["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "experimental"));
            if test.get("expectError").and_then(Value::as_bool) == Some(true) {
                match ViewDefinition::from_json(&test["view"]) {
                    Err(e) => refused_when_read.push(format!("{file} / {title}: {e}")),
                    Ok(_) => failed_on_data.push(format!("{file} / {title}")),
                }
            }
            match run_test(test, &resources, Input::Whole) {
                Outcome::Pass => {
                    passed += 1;
                    if experimental {
                        experimental_passed += 1;
                    }
                }
                Outcome::Fail(m) => failures.push(format!("{file} / {title}: {m}")),
            }
            // The same rows when only what the view reads is parsed.
            if let Outcome::Fail(m) = run_test(test, &resources, Input::Projected) {
                failures.push(format!("{file} / {title} (projected): {m}"));
            }
            if let Ok(v) = ViewDefinition::from_json(&test["view"]) {
                if !Projection::of([&v]).is_whole() {
                    projected += 1;
                }
            }
        }
    }
    println!(
        "SQL on FHIR v2 suite: {total} tests in {} files: {passed} passed \
         ({experimental_passed} of them experimental), {skipped} skipped, {} failed",
        files.len(),
        failures.len()
    );
    println!("{projected} of the views read only some top-level elements");
    assert!(
        projected > total / 2,
        "the projection is checked on too few views"
    );
    println!(
        "expectError: {} refused when the view is read, {} only when applied to data",
        refused_when_read.len(),
        failed_on_data.len()
    );
    for r in &refused_when_read {
        println!("  refused: {r}");
    }
    for r in &failed_on_data {
        println!("  on data: {r}");
    }
    for (i, (f, t, reason)) in SKIPPED.iter().enumerate() {
        println!("  skipped {f} / {t}: {reason}");
        assert!(
            seen_skips[i],
            "SKIPPED names a test that does not exist: {f} / {t}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {total} suite tests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed + skipped, total);
}

/// The comparison above fails on wrong results: a wrong value, a missing or extra row, wrong
/// column order, and an error expected where there is none.
#[test]
fn harness_detects_wrong_results() {
    let resources = vec![
        serde_json::json!({"resourceType": "Patient", "id": "p1", "active": true}),
        serde_json::json!({"resourceType": "Patient", "id": "p2"}),
    ];
    let view = serde_json::json!({
        "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "id"},
            {"name": "active", "path": "active"}
        ]}]
    });
    let test = |extra: Value| {
        let mut t = serde_json::json!({"title": "t", "view": view});
        if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        t
    };
    let right = test(serde_json::json!({
        "expect": [{"id": "p2", "active": null}, {"id": "p1", "active": true}],
        "expectColumns": ["id", "active"]
    }));
    assert!(matches!(
        run_test(&right, &resources, Input::Whole),
        Outcome::Pass
    ));
    let wrong = [
        serde_json::json!({"expect": [{"id": "p1", "active": false}, {"id": "p2", "active": null}]}),
        serde_json::json!({"expect": [{"id": "p1", "active": true}]}),
        serde_json::json!({"expect": [{"id": "p1", "active": true}, {"id": "p2", "active": null}, {"id": "p3", "active": null}]}),
        serde_json::json!({"expect": [{"id": "p1"}, {"id": "p2"}]}),
        serde_json::json!({"expect": [{"id": "p1", "active": true}, {"id": "p2", "active": null}], "expectColumns": ["active", "id"]}),
        serde_json::json!({"expectError": true}),
        serde_json::json!({"expectCount": 3}),
    ];
    for w in wrong {
        let t = test(w.clone());
        assert!(
            matches!(run_test(&t, &resources, Input::Whole), Outcome::Fail(_)),
            "passed: {w}"
        );
    }
}
