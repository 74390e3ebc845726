//! The HTTP contract over real HTTP (`bulk-export serve` in-process): errors are 4xx with an
//! OperationOutcome, headers and bodies follow the Bulk Data IG and Firely.

use std::time::Duration;

use integration_tests::{
    download_counts, http_client, kickoff, manifest_of, poll, temp_dir, Server, TestDb, TestServer,
};
use reqwest::Method;

async fn server_with(
    extra: &[(&'static str, &'static str)],
) -> (Server, integration_tests::data::DataSet) {
    let (db, data) = TestDb::with_generated(10).await;
    (TestServer::on(db).envs(extra).start().await, data)
}

async fn outcome(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    body
}

async fn post_kickoff(
    c: &reqwest::Client,
    url: &str,
    prefer: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    c.post(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", prefer)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST kick-off")
}

mod bodies;
mod files;
mod flood;
mod kickoff;
mod limits;
mod metadata;
mod metrics_endpoint;
mod status;
