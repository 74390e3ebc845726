//! `organizeOutputBy=Patient` (IG v3) over real HTTP: files of per-patient blocks, checked
//! block by block against what the generated data says each patient's block must hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::data::DataSet;
use integration_tests::{
    http_client, kick_off_and_wait, kickoff, load_json, poll, temp_dir, Server,
};
use serde_json::Value;

const PATIENTS: usize = 12;

/// Small files (MAX_FILE_BYTES = 16 KiB), so blocks spread over several files.
async fn server() -> (Server, DataSet) {
    integration_tests::local_server(
        PATIENTS,
        &[("MAX_FILE_BYTES", "16384"), ("MIN_POLL_INTERVAL_MS", "0")],
    )
    .await
}

/// The blocks of every output file, in file order: (patient id, resources as (type, id), and
/// the resources themselves). Checks the header of each block.
async fn blocks(c: &reqwest::Client, manifest: &Value) -> Vec<(String, Vec<Value>)> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for entry in manifest["output"].as_array().expect("output") {
        assert!(entry.get("type").is_none(), "no type on {entry}");
        assert!(entry.get("count").is_none(), "no count on {entry}");
        let text = integration_tests::download_text(c, entry["url"].as_str().expect("url")).await;
        let mut lines = text.lines();
        let first: Value =
            serde_json::from_str(lines.next().expect("non-empty file")).expect("json");
        assert_eq!(
            first["resourceType"], "Parameters",
            "a file starts with a header"
        );
        let mut current: Option<(String, Vec<Value>)> = None;
        for line in
            std::iter::once(first).chain(lines.map(|l| serde_json::from_str(l).expect("json")))
        {
            if line["resourceType"] == "Parameters" {
                assert_eq!(line["parameter"].as_array().map(Vec::len), Some(1));
                assert_eq!(line["parameter"][0]["name"], "header");
                let reference = line["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .expect("header reference");
                let patient = reference.strip_prefix("Patient/").expect("a Patient");
                out.extend(current.take());
                current = Some((patient.to_string(), Vec::new()));
            } else {
                current.as_mut().expect("inside a block").1.push(line);
            }
        }
        out.extend(current.take());
    }
    out
}

fn key(r: &Value) -> (String, String) {
    (
        r["resourceType"].as_str().expect("type").to_string(),
        r["id"].as_str().expect("id").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_export_organized_by_patient_has_one_block_per_patient() {
    let (server, data) = server().await;
    let c = http_client();
    let m = kick_off_and_wait(
        &c,
        &format!("{}/Patient/$export?organizeOutputBy=Patient", server.base),
    )
    .await;
    assert_eq!(m["outputOrganizedBy"], "Patient");
    assert!(m["error"].as_array().is_some_and(Vec::is_empty), "{m}");
    let files = m["output"].as_array().expect("output").len();
    assert!(files > 1, "16 KiB files: {files} file(s)");

    let blocks = blocks(&c, &m).await;
    // One block per patient, in id order; never split (a split block would repeat its header).
    let order: Vec<&str> = blocks.iter().map(|(p, _)| p.as_str()).collect();
    let expected_order: Vec<String> = data.patient_ids().into_iter().collect();
    assert_eq!(order, expected_order);
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for (patient, resources) in &blocks {
        assert_eq!(
            key(&resources[0]),
            ("Patient".into(), patient.clone()),
            "the Patient first"
        );
        let got: BTreeSet<(String, String)> = resources.iter().map(key).collect();
        assert_eq!(
            got.len(),
            resources.len(),
            "{patient}: no resource twice in a block"
        );
        assert_eq!(
            got,
            data.expected_block(patient),
            "{patient}: the block's resources"
        );
        // After the Patient, by type then id.
        let rest: Vec<(String, String)> = resources[1..].iter().map(key).collect();
        let mut sorted = rest.clone();
        sorted.sort();
        assert_eq!(rest, sorted, "{patient}: ordered by type and id");
        for r in resources {
            *types.entry(key(r).0).or_default() += 1;
        }
    }
    for t in [
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "Provenance",
        "Organization",
    ] {
        assert!(
            types.get(t).is_some_and(|n| *n > 0),
            "{t} in blocks: {types:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_export_by_patient_keeps_type_and_type_filter_and_lists_deletions() {
    let (server, data) = server().await;
    let c = http_client();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After `since`: every Observation of pat-0 is touched (so it is newer than `since`), and
    // one laboratory Observation of pat-2 is deleted.
    let pool = &server.state.pool;
    let touched: Vec<Value> = data
        .resources
        .iter()
        .filter(|r| {
            r["resourceType"] == "Observation" && r["subject"]["reference"] == "Patient/pat-0"
        })
        .cloned()
        .collect();
    let dir = temp_dir();
    std::fs::write(
        dir.join("Observation.ndjson"),
        touched.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .expect("write");
    shared::load::load_paths(pool, &[dir], |_| {})
        .await
        .expect("load");
    let n = shared::db::resources::delete_resources(
        pool,
        &[("Observation".into(), "obs-2-0-3".into())],
    )
    .await
    .expect("delete");
    assert_eq!(n, 1);

    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let m = kick_off_and_wait(
        &c,
        &format!(
            "{}/Group/group-even/$export?organizeOutputBy=Patient&_since={since}&_type=Patient,Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory",
            server.base
        ),
    )
    .await;
    let blocks = blocks(&c, &m).await;
    // Only pat-0 has changes since `since`: its laboratory Observations, no Patient resource.
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let (patient, resources) = &blocks[0];
    assert_eq!(patient, "pat-0");
    let got: BTreeSet<(String, String)> = resources.iter().map(key).collect();
    let expected: BTreeSet<(String, String)> = touched
        .iter()
        .filter(|r| r["category"][0]["coding"][0]["code"] == "laboratory")
        .map(key)
        .collect();
    assert_eq!(got, expected);
    // deleted[] as without blocks: the deleted laboratory Observation of a Group member.
    let deleted = m["deleted"].as_array().expect("deleted[]");
    assert_eq!(deleted.len(), 1, "{m}");
    assert_eq!(deleted[0]["type"], "Bundle");
    let text = c
        .get(deleted[0]["url"].as_str().expect("url"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let bundle: Value = serde_json::from_str(text.trim()).expect("one bundle");
    assert_eq!(
        bundle["entry"][0]["request"]["url"],
        "Observation/obs-2-0-3"
    );
}

#[tokio::test]
async fn organize_output_by_other_types_or_at_system_level_is_refused_unless_lenient() {
    let (server, _) = server().await;
    let c = http_client();
    for path in [
        "/$export?organizeOutputBy=Patient",
        "/Patient/$export?organizeOutputBy=Encounter",
    ] {
        let resp = kickoff(&c, &format!("{}{path}", server.base)).await;
        assert_eq!(resp.status(), 400, "{path}");
        let oo: Value = resp.json().await.expect("OperationOutcome");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(
            oo["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("organizeOutputBy")),
            "{oo}"
        );
    }
    // Lenient: ignored, reported in error[], files by type as usual.
    let resp = c
        .get(format!(
            "{}/$export?organizeOutputBy=Patient&_type=Patient",
            server.base
        ))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let done = poll(&c, &status_url, Duration::from_secs(60)).await;
    let m: Value = done.json().await.expect("manifest");
    assert!(m.get("outputOrganizedBy").is_none());
    assert_eq!(m["output"][0]["type"], "Patient");
    assert_eq!(m["error"].as_array().map(Vec::len), Some(1), "{m}");
}

/// With `_until`, blocks hold the versions current then (read from history): an update, a
/// deletion and a creation after `_until` do not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_with_until_hold_the_data_as_it_was() {
    let (server, data) = server().await;
    let c = http_client();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    load_json(
        &server.state.pool,
        &super::export_filters::changes_after_until(),
    )
    .await;

    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let m = kick_off_and_wait(
        &c,
        &format!(
            "{}/Patient/$export?organizeOutputBy=Patient&_type=Patient,Observation&_until={until}",
            server.base
        ),
    )
    .await;
    let blocks = blocks(&c, &m).await;
    let patients: Vec<String> = blocks.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        patients,
        data.patient_ids().into_iter().collect::<Vec<_>>(),
        "no block for pat-new"
    );
    let (_, pat0) = &blocks[0];
    assert_eq!(pat0[0]["id"], "pat-0");
    assert_eq!(pat0[0]["gender"], "female", "the version current at _until");
    assert!(pat0.iter().any(|r| r["id"] == "obs-0-0-0"), "deleted later");
    let observations = pat0
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .count();
    assert_eq!(
        observations,
        data.count_where("Observation", |r| r["subject"]["reference"]
            == "Patient/pat-0")
    );
}
