//! SQL on FHIR `$viewdefinition-export` and `$viewdefinition-run` over real HTTP: the rows in the
//! files equal rows computed here straight from the input resources (not through the view
//! evaluator), in every format; bad views are refused at kick-off naming the element.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::data::DataSet;
use integration_tests::{http_client, poll, Server};
use serde_json::{json, Value};

const PATIENTS: usize = 12;

async fn server() -> (Server, DataSet) {
    integration_tests::local_server(
        PATIENTS,
        &[("MAX_FILE_BYTES", "16384"), ("MIN_POLL_INTERVAL_MS", "0")],
    )
    .await
}

/// One row per patient name (a null row for a patient without one).
pub(crate) fn patients_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patients",
        "resource": "Patient",
        "status": "active",
        "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "gender", "path": "gender"},
                {"name": "birth_date", "path": "birthDate"}
            ]},
            {"forEachOrNull": "name", "column": [
                {"name": "family", "path": "family"},
                {"name": "given", "path": "given.join(' ')"}
            ]}
        ]
    })
}

/// One row per coding of each Observation's code, with its value and subject.
pub(crate) fn observations_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "observations",
        "resource": "Observation",
        "status": "active",
        "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "unit", "path": "value.ofType(Quantity).unit"}
            ]},
            {"forEach": "code.coding", "column": [
                {"name": "system", "path": "system"},
                {"name": "code", "path": "code"}
            ]}
        ]
    })
}

/// What the patients view gives, computed from the resources: rows as sorted JSON text.
pub(crate) fn expected_patients(data: &DataSet) -> Vec<String> {
    let mut rows = Vec::new();
    for p in data
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
    {
        let base = json!({
            "id": p["id"],
            "gender": p.get("gender").cloned().unwrap_or(Value::Null),
            "birth_date": p.get("birthDate").cloned().unwrap_or(Value::Null),
        });
        let names = p["name"].as_array().cloned().unwrap_or_default();
        let mut add = |family: Value, given: Value| {
            let mut r = base.clone();
            r["family"] = family;
            r["given"] = given;
            rows.push(r.to_string());
        };
        if names.is_empty() {
            add(Value::Null, Value::Null);
        }
        for n in names {
            let given: Vec<&str> = n["given"]
                .as_array()
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let given = if given.is_empty() {
                Value::Null
            } else {
                json!(given.join(" "))
            };
            add(n.get("family").cloned().unwrap_or(Value::Null), given);
        }
    }
    rows.sort();
    rows
}

/// What the observations view gives, computed from the resources.
pub(crate) fn expected_observations(data: &DataSet, patients: Option<&[String]>) -> Vec<String> {
    let mut rows = Vec::new();
    for o in data
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
    {
        let subject = o["subject"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
            .map(str::to_string);
        if let Some(ps) = patients {
            if !subject.as_ref().is_some_and(|s| ps.contains(s)) {
                continue;
            }
        }
        let q = o.get("valueQuantity");
        for c in o["code"]["coding"].as_array().cloned().unwrap_or_default() {
            let r = json!({
                "id": o["id"],
                "patient": subject.clone().map_or(Value::Null, Value::String),
                "value": q.and_then(|q| q.get("value")).cloned().unwrap_or(Value::Null),
                "unit": q.and_then(|q| q.get("unit")).cloned().unwrap_or(Value::Null),
                "system": c.get("system").cloned().unwrap_or(Value::Null),
                "code": c.get("code").cloned().unwrap_or(Value::Null),
            });
            rows.push(r.to_string());
        }
    }
    rows.sort();
    rows
}

pub(crate) fn view_param(view: Value) -> Value {
    json!({"name": "view", "part": [{"name": "viewResource", "resource": view}]})
}

pub(crate) async fn kick_off(c: &reqwest::Client, url: &str, params: Value) -> reqwest::Response {
    c.post(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .expect("kick-off")
}

/// Kicks off a view export and waits for its manifest.
async fn export(c: &reqwest::Client, url: &str, params: Value) -> Value {
    let resp = kick_off(c, url, params).await;
    let status_url = integration_tests::status_url_of(resp).await;
    let done = poll(c, &status_url, Duration::from_secs(120)).await;
    assert_eq!(done.status(), 200);
    done.json().await.expect("manifest")
}

/// The manifest's files of `view`, downloaded.
pub(crate) async fn files_of(
    c: &reqwest::Client,
    manifest: &Value,
    view: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in manifest["output"].as_array().expect("output") {
        if entry["type"] != view {
            continue;
        }
        let url = entry["url"].as_str().expect("url");
        let resp = c.get(url).send().await.expect("download");
        assert_eq!(resp.status(), 200, "{url}");
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        out.push((ct, resp.bytes().await.expect("body").to_vec()));
    }
    assert!(!out.is_empty(), "no file of {view} in {manifest}");
    out
}

/// ndjson rows as sorted JSON text (members in column order).
pub(crate) fn ndjson_rows(files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    for (ct, bytes) in files {
        assert!(ct.contains("ndjson"), "{ct}");
        for line in String::from_utf8(bytes.clone()).expect("utf-8").lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON row");
            rows.push(v.to_string());
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_export_as_ndjson_with_exactly_the_rows_of_the_input() {
    let (server, data) = server().await;
    let c = http_client();
    let m = export(
        &c,
        &format!("{}/ViewDefinition/$viewdefinition-export", server.base),
        json!([view_param(patients_view()), view_param(observations_view())]),
    )
    .await;
    assert!(m["error"].as_array().is_some_and(Vec::is_empty), "{m}");
    let types: BTreeMap<String, usize> =
        m["output"]
            .as_array()
            .expect("output")
            .iter()
            .fold(BTreeMap::new(), |mut acc, e| {
                *acc.entry(e["type"].as_str().expect("type").to_string())
                    .or_default() += 1;
                acc
            });
    assert_eq!(
        types.keys().cloned().collect::<Vec<_>>(),
        ["observations", "patients"]
    );
    assert!(types["observations"] > 1, "16 KiB files: {types:?}");
    let patients = ndjson_rows(&files_of(&c, &m, "patients").await);
    assert_eq!(patients, expected_patients(&data));
    let observations = ndjson_rows(&files_of(&c, &m, "observations").await);
    let expected = expected_observations(&data, None);
    assert_eq!(observations.len(), expected.len());
    assert_eq!(observations, expected);
    // The manifest counts rows.
    let counted: i64 = m["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|e| e["type"] == "observations")
        .map(|e| e["count"].as_i64().expect("count"))
        .sum();
    assert_eq!(counted as usize, expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_view_export_as_csv_holds_the_members_rows_with_rfc4180_quoting() {
    let (server, data) = server().await;
    let c = http_client();
    let m = export(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([
            view_param(observations_view()),
            {"name": "_format", "valueCode": "csv"},
            {"name": "group", "valueReference": {"reference": format!("Group/{}", data.group_id)}}
        ]),
    )
    .await;
    let members: Vec<String> = data.group_members().into_iter().collect();
    let files = files_of(&c, &m, "observations").await;
    let mut rows: Vec<String> = Vec::new();
    for (ct, bytes) in &files {
        assert!(ct.starts_with("text/csv"), "{ct}");
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, ["id", "patient", "value", "unit", "system", "code"]);
        for record in reader.records() {
            let record = record.expect("an RFC 4180 record");
            let cell = |i: usize| -> Value {
                match record.get(i).unwrap_or_default() {
                    "" => Value::Null,
                    s => json!(s),
                }
            };
            let value = match record.get(2).unwrap_or_default() {
                "" => Value::Null,
                s => serde_json::from_str(s).expect("a number"),
            };
            rows.push(
                json!({"id": cell(0), "patient": cell(1), "value": value, "unit": cell(3),
                       "system": cell(4), "code": cell(5)})
                .to_string(),
            );
        }
    }
    rows.sort();
    assert_eq!(rows, expected_observations(&data, Some(&members)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_cannot_run_is_refused_at_kickoff_naming_the_element() {
    let (server, _) = server().await;
    let c = http_client();
    let mut bad = patients_view();
    bad["select"][1]["column"][0]["path"] = json!("family.nosuchfunction()");
    let resp = kick_off(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([view_param(bad)]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let outcome: Value = resp.json().await.expect("OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let text = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("ViewDefinition.select[1].column[0].path") && text.contains("nosuchfunction"),
        "{outcome}"
    );
    // A format nobody can read, and GET, are refused too.
    let resp = kick_off(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([view_param(patients_view()), {"name": "_format", "valueCode": "xlsx"}]),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_a_views_rows_at_once_over_stored_or_inline_resources() {
    let (server, data) = server().await;
    let c = http_client();
    let run = |params: Value| {
        let c = c.clone();
        let url = format!("{}/$viewdefinition-run", server.base);
        async move {
            c.post(url)
                .header("Content-Type", "application/fhir+json")
                .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
                .send()
                .await
                .expect("run")
        }
    };
    // Stored data, as JSON.
    let resp = run(json!([{"name": "viewResource", "resource": patients_view()}])).await;
    assert_eq!(resp.status(), 200);
    let rows: Vec<Value> = resp.json().await.expect("rows");
    let mut got: Vec<String> = rows.iter().map(Value::to_string).collect();
    got.sort();
    assert_eq!(got, expected_patients(&data));
    // Inline resources, _limit, CSV.
    let resp = run(json!([
        {"name": "viewResource", "resource": patients_view()},
        {"name": "_format", "valueCode": "csv"},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "a", "gender": "female",
            "name": [{"family": "O\"Hara, Jr", "given": ["Ann", "B"]}]}},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "b"}}
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/csv"));
    let text = resp.text().await.expect("csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_string).collect())
        .collect();
    assert_eq!(
        records,
        [
            vec!["a", "female", "", "O\"Hara, Jr", "Ann B"],
            vec!["b", "", "", "", ""]
        ]
    );
    let resp = run(json!([
        {"name": "viewResource", "resource": patients_view()},
        {"name": "_limit", "valueInteger": 2}
    ]))
    .await;
    let rows: Vec<Value> = resp.json().await.expect("rows");
    assert_eq!(rows.len(), 2);
}

/// Each Condition with its patient's key (for the join to the patients view).
fn conditions_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "conditions",
        "resource": "Condition",
        "status": "active",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "onset", "path": "onset.ofType(dateTime)"}
        ]}]
    })
}

/// The data set (the 100-patient Synthea set beside the checkout, else the generated one)
/// exported through the three views in Parquet, CSV and ndjson; tests/tools/check_views.py
/// reads the files with pyarrow, the csv module and json, computes the rows from the input
/// ndjson itself, and joins conditions to patients in DuckDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_readers_find_the_rows_of_the_input_in_every_format() {
    let (db, data) = integration_tests::TestDb::from_template().await;
    let server = integration_tests::TestServer::on(db)
        .envs(&[("MIN_POLL_INTERVAL_MS", "0")])
        .start()
        .await;
    let c = http_client();
    let out = integration_tests::temp_dir();
    for format in ["parquet", "csv", "ndjson"] {
        let m = export(
            &c,
            &format!("{}/$viewdefinition-export", server.base),
            json!([
                view_param(patients_view()),
                view_param(observations_view()),
                view_param(conditions_view()),
                {"name": "_format", "valueCode": format}
            ]),
        )
        .await;
        for view in ["patients", "observations", "conditions"] {
            let dir = out.join(format).join(view);
            std::fs::create_dir_all(&dir).expect("dir");
            for (i, (ct, bytes)) in files_of(&c, &m, view).await.into_iter().enumerate() {
                let expected_type = match format {
                    "parquet" => "application/vnd.apache.parquet",
                    "csv" => "text/csv",
                    _ => "ndjson",
                };
                assert!(ct.contains(expected_type), "{format}: {ct}");
                std::fs::write(dir.join(format!("{i:04}.{format}")), bytes).expect("write");
            }
        }
    }
    let venv = std::env::var("TOOLS_VENV").expect("TOOLS_VENV: run the tests with scripts/test.sh");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_views.py");
    let result = std::process::Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(&data.dir)
        .arg(&out)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 10);
}

/// A Parquet view export to S3 (moto): the files are multipart uploads stored as
/// `application/vnd.apache.parquet` with no gzip copy beside them (Parquet is compressed), and a
/// client that accepts gzip is still sent to the file itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_view_export_to_s3_is_stored_as_parquet_without_a_gzip_copy() {
    use shared::storage::ObjectStore;
    let (db, data) = integration_tests::TestDb::with_generated(PATIENTS).await;
    let (client, bucket) = integration_tests::new_bucket().await;
    let cfg = integration_tests::config(
        &db,
        shared::config::StoragePath::S3 {
            bucket: bucket.clone(),
            prefix: "exports".into(),
        },
    );
    let store: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(
        shared::storage::s3::S3Store::new(client.clone(), bucket.clone(), "exports".into()),
    );
    let pool = db.pool.clone();
    let server = Server::start(cfg, pool, store).await.owning(db);
    let c = http_client();
    let m = export(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([view_param(patients_view()), {"name": "_format", "valueCode": "parquet"}]),
    )
    .await;
    let rows: i64 = m["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|e| e["count"].as_i64().expect("count"))
        .sum();
    assert_eq!(rows as usize, expected_patients(&data).len());
    let url = m["output"][0]["url"].as_str().expect("url");
    let file = c
        .get(url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("download");
    assert_eq!(file.status(), 200);
    assert_eq!(
        file.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    assert!(file.headers().get("content-encoding").is_none());
    let bytes = file.bytes().await.expect("body");
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("exports/")
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".gz")), "{keys:?}");
}

/// A ViewDefinition loaded with the data (`bulk-export load` takes SQL on FHIR's logical
/// resource) is named by `viewReference` in an export and a run; it is never exported itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_view_definition_is_named_by_reference_and_never_exported() {
    let (server, data) = server().await;
    let mut stored = patients_view();
    stored["id"] = json!("demographics");
    let report = integration_tests::load_json(&server.state.pool, &stored).await;
    assert_eq!(report.loaded, 1, "{:?}", report.rejected);
    let c = http_client();
    let reference = json!({"name": "viewReference", "valueReference": {"reference": "ViewDefinition/demographics"}});
    let m = export(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([{"name": "view", "part": [reference]}]),
    )
    .await;
    assert_eq!(
        ndjson_rows(&files_of(&c, &m, "patients").await),
        expected_patients(&data)
    );
    let resp = c
        .post(format!("{}/$viewdefinition-run", server.base))
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": [reference]}).to_string())
        .send()
        .await
        .expect("run");
    assert_eq!(resp.status(), 200);
    let rows: Vec<Value> = resp.json().await.expect("rows");
    assert_eq!(rows.len(), expected_patients(&data).len());
    // Unknown: a 400 that says what to do.
    let resp = kick_off(
        &c,
        &format!("{}/$viewdefinition-export", server.base),
        json!([{"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/nope"}}]}]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let outcome: Value = resp.json().await.expect("outcome");
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("ViewDefinition/nope is not stored on this server"),
        "{outcome}"
    );
    // A system export of every type holds the data, not the stored view.
    let resp = integration_tests::kickoff(&c, &format!("{}/$export", server.base)).await;
    let status_url = integration_tests::status_url_of(resp).await;
    let done = poll(&c, &status_url, Duration::from_secs(120)).await;
    let manifest: Value = done.json().await.expect("manifest");
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(types.contains(&"Patient"), "{types:?}");
    assert!(!types.contains(&"ViewDefinition"), "{types:?}");
}
