//! `_typeFilter`, `_elements` and `includeAssociatedData` over real HTTP (`bulk-export serve`
//! in-process) against the generated data set, whose expected results are computed here from
//! the data, independently of the server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::data::{provenance_targets, DataSet};
use integration_tests::{
    download_counts, http_client, kick_off_and_wait, kickoff, load_json, manifest_of, Server,
};
use serde_json::{json, Value};

const PATIENTS: usize = 10;

async fn server() -> (Server, DataSet) {
    integration_tests::local_server(PATIENTS, &[]).await
}

async fn export(c: &reqwest::Client, url: &str) -> Value {
    kick_off_and_wait(c, url).await
}

async fn post_export(c: &reqwest::Client, url: &str, params: Value) -> Value {
    let resp = c
        .post(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .expect("POST kick-off");
    manifest_of(c, resp).await
}

/// Every exported resource of the manifest's output, by type.
async fn download_all(c: &reqwest::Client, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in manifest["output"].as_array().expect("output") {
        let text = integration_tests::download_text(c, entry["url"].as_str().expect("url")).await;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("json line");
            out.entry(entry["type"].as_str().expect("type").to_string())
                .or_default()
                .push(v);
        }
    }
    out
}

/// After an `_until`: pat-0 changes, pat-new arrives, obs-0-0-0 is deleted.
pub(crate) fn changes_after_until() -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "pat-0", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/pat-0"}},
        {"resource": {"resourceType": "Patient", "id": "pat-new", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/pat-new"}},
        {"request": {"method": "DELETE", "url": "Observation/obs-0-0-0"}}]})
}

fn category(r: &Value) -> &str {
    r["category"][0]["coding"][0]["code"].as_str().unwrap_or("")
}

fn ids(resources: Option<&Vec<Value>>) -> BTreeSet<String> {
    resources
        .map(|rs| {
            rs.iter()
                .map(|r| r["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

mod subsets;
mod type_filter;
