//! `$viewdefinition-export` through the stack as Lambda runs it (integration_tests::lambda_rig):
//! the kick-off function behind each front door, the exporter woken by the queue's messages
//! through the poller, the status function's manifest, and every file fetched through the file
//! function's 307 to a presigned S3 URL (s3s-fs checks the signature).

use std::collections::BTreeMap;
use std::path::Path;

use integration_tests::lambda_rig::ApiType;
use integration_tests::{bearer_client, http_client};
use serde_json::{json, Value};

use super::emulated::{deployed, token, wait_done};
use crate::views::{
    expected_observations, expected_patients, kick_off, observations_view, patients_view,
    view_param,
};

/// A file of the manifest entry `entry`, fetched as a client does: `$exportfilerequest` with
/// the token answers 307 to a presigned URL, fetched without it.
async fn download(base: &str, entry: &Value) -> Vec<u8> {
    let url = entry["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!("{base}/$exportfilerequest?")),
        "{url}"
    );
    let redirect = integration_tests::http_client_no_redirect()
        .get(url)
        .bearer_auth(token(base, "analyst").await)
        .send()
        .await
        .expect("file request");
    assert_eq!(redirect.status(), 307, "{url}");
    let location = redirect.headers()["location"].to_str().expect("location");
    assert!(
        location.starts_with(&integration_tests::s3s().endpoint),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let file = http_client().get(location).send().await.expect("download");
    assert_eq!(file.status(), 200, "{location}");
    file.bytes().await.expect("body").to_vec()
}

/// Reads Parquet files with pyarrow (an independent reader): per file its row count, and for
/// `with_rows` files its rows as JSON objects.
fn read_parquet(files: &[(std::path::PathBuf, bool)]) -> Vec<(usize, Vec<Value>)> {
    let venv = std::env::var("TOOLS_VENV").expect("TOOLS_VENV: run the tests with scripts/test.sh");
    let script = r#"
import json, sys
import pyarrow.parquet as pq
for path, with_rows in zip(sys.argv[1::2], sys.argv[2::2]):
    table = pq.read_table(path)
    rows = table.to_pylist() if with_rows == "1" else []
    print(json.dumps({"count": table.num_rows, "rows": rows}))
"#;
    let mut cmd = std::process::Command::new(format!("{venv}/bin/python"));
    cmd.arg("-c").arg(script);
    for (path, with_rows) in files {
        cmd.arg(path).arg(if *with_rows { "1" } else { "0" });
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            (v["count"].as_u64().expect("count") as usize, rows)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_export_runs_through_the_lambdas_behind_both_front_doors() {
    for (api_type, format) in [(ApiType::HttpApi, "parquet"), (ApiType::RestApi, "ndjson")] {
        let what = format!("{} {format}", api_type.name());
        let (_db, data, stack) = deployed("analyst", api_type).await;
        let base = stack.base_url.clone();
        let client = bearer_client(&token(&base, "analyst").await);
        let resp = kick_off(
            &client,
            &format!("{base}/$viewdefinition-export"),
            json!([
                view_param(patients_view()),
                view_param(observations_view()),
                {"name": "_format", "valueCode": format}
            ]),
        )
        .await;
        let status_url = integration_tests::status_url_of(resp).await;
        assert!(
            status_url.starts_with(&format!("{base}/$exportstatus?_id=")),
            "{what}: {status_url}"
        );
        let done = wait_done(&client, &status_url, &stack).await;
        assert_eq!(done.status(), 200, "{what}\n{}", stack.logs());
        let manifest: Value = done.json().await.expect("manifest");
        assert_eq!(manifest["requiresAccessToken"], true, "{what}");
        assert!(
            manifest["error"].as_array().is_some_and(Vec::is_empty),
            "{what}: {manifest}"
        );
        // Every file, downloaded: (view, manifest count, bytes).
        let mut files: Vec<(String, usize, Vec<u8>)> = Vec::new();
        for entry in manifest["output"].as_array().expect("output") {
            let view = entry["type"].as_str().expect("type").to_string();
            let count = entry["count"].as_u64().expect("count") as usize;
            files.push((view, count, download(&base, entry).await));
        }
        let views: std::collections::BTreeSet<&str> =
            files.iter().map(|(v, _, _)| v.as_str()).collect();
        assert_eq!(
            views.into_iter().collect::<Vec<_>>(),
            ["observations", "patients"],
            "{what}"
        );

        // Rows per view as sorted JSON text (Parquet: only the patients view's rows; the
        // observations view's decimals are DECIMAL(38,18) there, so its files are counted).
        let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut counted: BTreeMap<String, usize> = BTreeMap::new();
        if format == "parquet" {
            let dir = integration_tests::temp_dir();
            let mut paths = Vec::new();
            for (i, (view, _, bytes)) in files.iter().enumerate() {
                assert!(
                    bytes.len() > 8 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
                    "{what}: {view} file {i} is Parquet"
                );
                let path = Path::new(&dir).join(format!("{i:04}.parquet"));
                std::fs::write(&path, bytes).expect("write");
                paths.push((path, view == "patients"));
            }
            for ((view, count, _), (read, file_rows)) in files.iter().zip(read_parquet(&paths)) {
                assert_eq!(
                    read, *count,
                    "{what}: {view}: the manifest counts the file's rows"
                );
                *counted.entry(view.clone()).or_default() += read;
                let out = rows.entry(view.clone()).or_default();
                out.extend(file_rows.iter().map(Value::to_string));
            }
        } else {
            for (view, count, bytes) in &files {
                let text = String::from_utf8(bytes.clone()).expect("utf-8");
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<Value>(l)
                            .expect("an ndjson row")
                            .to_string()
                    })
                    .collect();
                assert_eq!(lines.len(), *count, "{what}: {view}: the manifest counts");
                *counted.entry(view.clone()).or_default() += lines.len();
                rows.entry(view.clone()).or_default().extend(lines);
            }
        }
        for r in rows.values_mut() {
            r.sort();
        }
        let patients = expected_patients(data);
        let observations = expected_observations(data, None);
        assert_eq!(counted["patients"], patients.len(), "{what}: patients rows");
        assert_eq!(
            counted["observations"],
            observations.len(),
            "{what}: observations rows"
        );
        assert_eq!(rows["patients"], patients, "{what}: patients rows");
        if format == "ndjson" {
            assert_eq!(
                rows["observations"], observations,
                "{what}: observations rows"
            );
        }
        // The exporter function did the work, woken through the queue; nothing dead-lettered.
        assert!(
            stack
                .exporters
                .iter()
                .map(|e| e.invocations())
                .sum::<usize>()
                > 0,
            "{what}: the queue's exporter ran"
        );
        assert!(
            stack.dead_letters().await.is_empty(),
            "{what}: nothing dead-lettered"
        );
    }
}
