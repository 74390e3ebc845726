//! End to end over HTTP: load the data set, run system, Patient and Group exports through
//! `bulk-export serve` with local storage and with S3 (moto), download every file as a client
//! would, and compare counts per type with counts computed independently from the input files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::data::DataSet;
use integration_tests::{
    config, download_counts, download_lines, http_client, http_client_no_redirect, kickoff,
    new_bucket, poll, temp_dir, Server, TestDb, TestServer,
};
use shared::config::StoragePath;
use shared::fhir::raw::RawObject;
use shared::storage::local::LocalStore;
use shared::storage::s3::S3Store;
use shared::storage::ObjectStore;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn local_server() -> (Server, &'static DataSet, std::path::PathBuf) {
    let (db, data) = TestDb::from_template().await;
    let dir = temp_dir();
    let cfg = config(&db, StoragePath::Local(dir.clone()));
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.clone()).expect("store"));
    let pool = db.pool.clone();
    (Server::start(cfg, pool, store).await.owning(db), data, dir)
}

async fn s3_server() -> (Server, &'static DataSet, aws_sdk_s3::Client, String) {
    let (db, data) = TestDb::from_template().await;
    let (client, bucket) = new_bucket().await;
    let cfg = config(
        &db,
        StoragePath::S3 {
            bucket: bucket.clone(),
            prefix: "exports".into(),
        },
    );
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(
        client.clone(),
        bucket.clone(),
        "exports".into(),
    ));
    let pool = db.pool.clone();
    (
        Server::start(cfg, pool, store).await.owning(db),
        data,
        client,
        bucket,
    )
}

/// Kicks off `path`, checks the 202, polls to completion, checks the manifest; returns it.
async fn export(server: &Server, path: &str) -> serde_json::Value {
    let client = http_client();
    let url = format!("{}{}", server.base, path);
    let resp = kickoff(&client, &url).await;
    assert_eq!(resp.status(), 202, "kick-off {path}");
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("content-location")
        .to_string();
    assert!(
        status_url.starts_with(&format!("{}/$exportstatus?_id=", server.base)),
        "absolute status URL: {status_url}"
    );
    let body: serde_json::Value = resp.json().await.expect("kick-off body");
    assert_eq!(body["resourceType"], "OperationOutcome");

    let done = poll(&client, &status_url, TIMEOUT).await;
    assert_eq!(done.status(), 200);
    assert_eq!(done.headers()["content-type"], "application/json");
    assert!(done.headers().contains_key("expires"), "Expires header");
    let manifest: serde_json::Value = done.json().await.expect("manifest");
    assert_eq!(manifest["request"], url);
    assert_eq!(
        manifest["requiresAccessToken"], false,
        "no authorization configured"
    );
    assert!(manifest["transactionTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(manifest["error"].is_array(), "error[] always present");
    for entry in manifest["output"].as_array().expect("output") {
        assert!(entry["url"]
            .as_str()
            .expect("url")
            .starts_with(&server.base));
        assert!(
            entry["count"].as_u64().expect("count") > 0,
            "no empty files listed"
        );
    }
    manifest
}

fn without_zeroes(m: BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    m.into_iter().filter(|(_, n)| *n > 0).collect()
}

async fn check_all_levels(server: &Server, data: &DataSet) {
    let client = http_client();

    let system = export(server, "/$export").await;
    let got = download_counts(&client, &system, "output").await;
    assert_eq!(got, data.count_by_type(), "system export counts");
    assert!(got.contains_key("Device"), "Device is in a system export");

    let patient = export(server, "/Patient/$export").await;
    let got = download_counts(&client, &patient, "output").await;
    let expected = data.expected_compartment_export(&data.patient_ids());
    assert_eq!(
        got,
        without_zeroes(expected.clone()),
        "Patient export counts"
    );
    assert!(!got.contains_key("Group"), "a Patient export has no Groups");
    assert_eq!(
        got.contains_key("Device"),
        expected.contains_key("Device"),
        "Device only when referenced"
    );
    assert!(
        !got.contains_key("Device"),
        "no resource references a Device in this data set"
    );
    assert!(
        !got.contains_key("Practitioner"),
        "Practitioner is not an AdditionalResources type"
    );
    // Each reference to an AdditionalResources-type resource that does not exist is one
    // OperationOutcome in error[] (none in a data set without such references).
    let dangling = data.dangling_references(&data.patient_ids());
    let reported: u64 = patient["error"]
        .as_array()
        .expect("error[]")
        .iter()
        .map(|e| e["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(reported, dangling.len() as u64, "error[]: {dangling:?}");

    let group = export(server, &format!("/Group/{}/$export", data.group_id)).await;
    let got = download_counts(&client, &group, "output").await;
    let expected = data.expected_compartment_export(&data.group_members());
    assert_eq!(got, without_zeroes(expected), "Group export counts");
    assert!(
        !got.contains_key("Group"),
        "a Group export never pulls in Groups"
    );
    assert_eq!(
        got.get("Patient").copied(),
        Some(data.group_members().len())
    );

    let typed = export(
        server,
        "/$export?_type=Patient,Observation&_outputFormat=ndjson",
    )
    .await;
    let got = download_counts(&client, &typed, "output").await;
    let all = data.count_by_type();
    let want: BTreeMap<String, usize> = ["Observation", "Patient"]
        .iter()
        .map(|t| (t.to_string(), all[*t]))
        .collect();
    assert_eq!(got, want, "_type limits a system export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_at_every_level_match_the_input_with_local_storage() {
    let (server, data, _dir) = local_server().await;
    check_all_levels(&server, data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_at_every_level_match_the_input_with_s3_storage_and_presigned_redirects() {
    let (server, data, _client, _bucket) = s3_server().await;
    check_all_levels(&server, data).await;

    // A download is a 307 to a short-lived presigned URL on the S3 endpoint, which serves the
    // file to a client that sends no Authorization header.
    let manifest = export(&server, "/$export?_type=Patient").await;
    let url = manifest["output"][0]["url"].as_str().expect("url");
    let resp = http_client_no_redirect()
        .get(url)
        .send()
        .await
        .expect("file request");
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with(&integration_tests::aws_endpoint()),
        "{location}"
    );
    assert!(location.contains("X-Amz-Expires=300"), "{location}");
    let file = reqwest::get(&location).await.expect("presigned GET");
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-type"], "application/fhir+ndjson");
    let lines = file.text().await.expect("body").lines().count();
    assert_eq!(lines, data.patient_ids().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_gives_202_then_404_and_deletes_the_files() {
    // One exporter and small work items: the export runs long enough to be cancelled midway.
    let (db, _data) = TestDb::from_template().await;
    let dir = temp_dir();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.clone()).expect("store"));
    let server = TestServer::on(db)
        .storage(dir.display().to_string(), store)
        .env("EXPORT_ITEM_BYTES", "1048576")
        .workers(1)
        .start()
        .await;
    let client = http_client();
    let resp = kickoff(&client, &format!("{}/$export", server.base)).await;
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let job_id = status_url.rsplit('=').next().expect("id").to_string();
    let id = uuid::Uuid::parse_str(&job_id).expect("uuid");

    // DELETE once the running export has written files (else there is nothing to delete).
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let written = std::fs::read_dir(dir.join(&job_id)).map_or(0, |d| d.count());
        let job = shared::db::jobs::get_job(&server.state.pool, id)
            .await
            .expect("db")
            .expect("job");
        assert_ne!(
            job.status,
            shared::export::JobStatus::Complete,
            "the export finished before it could be cancelled"
        );
        if written > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no file was written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let del = client.delete(&status_url).send().await.expect("delete");
    assert_eq!(del.status(), 202);
    let oo: serde_json::Value = del.json().await.expect("body");
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let after = client.get(&status_url).send().await.expect("status");
    assert_eq!(after.status(), 404);
    let oo: serde_json::Value = after.json().await.expect("body");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let again = client
        .delete(&status_url)
        .send()
        .await
        .expect("delete again");
    assert_eq!(again.status(), 404);

    // The exporter sees the cancellation and removes whatever it had written.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let job = shared::db::jobs::get_job(&server.state.pool, id)
            .await
            .expect("db")
            .expect("job");
        if job.status == shared::export::JobStatus::Cancelled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never became Cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dir.join(&job_id).exists(),
        "files of a cancelled job are deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_completed_export_removes_its_files_and_its_status() {
    let (server, _data, dir) = local_server().await;
    let manifest = export(&server, "/$export?_type=Patient").await;
    let url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();
    let job_id = url
        .split("_id=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("id")
        .to_string();
    assert!(dir.join(&job_id).exists());
    let status_url = format!("{}/$exportstatus?_id={job_id}", server.base);
    let client = http_client();
    assert_eq!(
        client
            .delete(&status_url)
            .send()
            .await
            .expect("delete")
            .status(),
        202
    );
    assert_eq!(
        client.get(&status_url).send().await.expect("get").status(),
        404
    );
    assert_eq!(client.get(&url).send().await.expect("file").status(), 404);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while dir.join(&job_id).exists() {
        assert!(std::time::Instant::now() < deadline, "files never purged");
        // The purge runs on the exporter's next wake-up (every REPEAT_PERIOD).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn independent_expectations_are_not_trivial() {
    let tpl = integration_tests::loaded_template();
    let data = &tpl.data;
    let patients: BTreeSet<String> = data.patient_ids();
    let expected = data.expected_compartment_export(&patients);
    assert_eq!(expected.get("Patient").copied(), Some(patients.len()));
    assert!(expected.get("Organization").copied().unwrap_or(0) > 0);
    assert!(expected.get("Organization") < data.count_by_type().get("Organization"));
}

/// `line` without its `meta` member (the loader stamps versionId/lastUpdated), every other
/// byte as it was.
fn without_meta(line: &str) -> String {
    let mut obj = RawObject::parse(line).expect("a resource is a JSON object");
    obj.retain(|k| k != "meta");
    obj.to_text()
}

fn key_of(line: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    (
        v["resourceType"].as_str().expect("type").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

/// Whether `v` holds a number whose text a round trip through f64 changes (`1.50`, `0.1000`,
/// 20 digits): what an exporter that parsed resources into floats would alter.
fn has_number_f64_changes(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => false,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| {
            serde_json::Number::from_f64(f).map(|g| g.to_string()) != Some(n.to_string())
        }),
        serde_json::Value::Array(a) => a.iter().any(has_number_f64_changes),
        serde_json::Value::Object(o) => o.values().any(has_number_f64_changes),
        _ => false,
    }
}

/// Exact means byte-exact: every resource of the data set is exported as it was loaded (numbers
/// included: `1.50` stays `1.50`, `0.0` stays `0.0`, 17 significant digits stay), apart from
/// the `meta` the loader stamps; and `_elements` keeps the listed elements byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_resources_are_byte_for_byte_what_was_loaded() {
    let (server, data, _dir) = local_server().await;
    let client = http_client();
    let mut input: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut changed_by_f64 = 0;
    // Numbers whatever the data set holds: trailing zeros, more digits than an f64 keeps, an
    // exponent.
    let exact = r#"{"resourceType":"Observation","id":"exact-numbers","status":"final","code":{"text":"n"},"valueQuantity":{"value":1.50},"component":[{"code":{"text":"a"},"valueQuantity":{"value":0.1000000000000000055511151231257827}},{"code":{"text":"b"},"valueQuantity":{"value":12345678901234567890.5}},{"code":{"text":"c"},"valueQuantity":{"value":1E+2}}]}"#;
    let extra = temp_dir();
    std::fs::write(extra.join("exact.ndjson"), format!("{exact}\n")).expect("write");
    let report = shared::load::load_paths(&server.state.pool, &[extra], |_| {})
        .await
        .expect("load");
    assert_eq!(report.loaded, 1, "{:?}", report.rejected);
    let reparsed: serde_json::Value = serde_json::from_str(exact).expect("json");
    assert!(has_number_f64_changes(&reparsed));
    changed_by_f64 += 1;
    input.insert(key_of(exact), exact.to_string());
    for entry in std::fs::read_dir(&data.dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            if line.trim().is_empty() {
                continue;
            }
            let reparsed: serde_json::Value = serde_json::from_str(line).expect("json");
            if has_number_f64_changes(&reparsed) {
                changed_by_f64 += 1;
            }
            input.insert(key_of(line), line.to_string());
        }
    }
    assert!(
        changed_by_f64 > 0,
        "the data set has numbers an f64 round trip changes (else this test proves nothing)"
    );

    let manifest = export(&server, "/$export").await;
    let lines = download_lines(&client, &manifest).await;
    for line in &lines {
        let key = key_of(line);
        let loaded = input.get(&key).expect("exported resource was loaded");
        assert_eq!(without_meta(line), without_meta(loaded), "{key:?}");
    }
    assert_eq!(lines.len(), input.len(), "every resource exported once");

    let manifest = export(
        &server,
        "/$export?_type=Observation&_elements=Observation.value",
    )
    .await;
    let lines = download_lines(&client, &manifest).await;
    for line in &lines {
        let out = RawObject::parse(line).expect("object");
        let loaded = RawObject::parse(&input[&key_of(line)]).expect("object");
        for k in out.keys().filter(|k| *k != "meta") {
            assert_eq!(
                out.get(k).map(|v| v.get()),
                loaded.get(k).map(|v| v.get()),
                "{k} of {line}"
            );
        }
    }
    assert_eq!(lines.len(), data.count_by_type()["Observation"] + 1);
}
