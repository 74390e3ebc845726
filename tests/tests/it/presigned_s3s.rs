//! Presigned download URLs against an S3 server that checks SigV4 signatures: s3s-fs, which
//! `scripts/test.sh` installs and starts (`TEST_S3S_ENDPOINT_URL`, `TEST_S3S_ACCESS_KEY`,
//! `TEST_S3S_SECRET_KEY`). moto, used by the other S3 tests, accepts any signature and ignores
//! expiry, so only here does a passing test prove that the URL our file route hands out is
//! correctly signed, and that a tampered or expired one is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::{http_client, http_client_no_redirect, Server, TestDb, TestServer};
use shared::storage::s3::S3Store;
use shared::storage::{ObjectStore, NDJSON_CONTENT_TYPE};

const PREFIX: &str = "exports";
const PATIENTS: usize = 5;

/// `bulk-export serve` over a generated data set, exporting to a new s3s-fs bucket, with
/// `PRESIGN_TTL_SECONDS` set when `presign_ttl` is given.
async fn s3s_server(presign_ttl: Option<&str>) -> (Server, aws_sdk_s3::Client, String) {
    let (db, _data) = TestDb::with_generated(PATIENTS).await;
    let (client, bucket) = integration_tests::new_s3s_bucket().await;
    let store: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(client.clone(), bucket.clone(), PREFIX.into()));
    let mut server = TestServer::on(db).storage(format!("s3://{bucket}/{PREFIX}"), store);
    if let Some(ttl) = presign_ttl {
        server = server.env("PRESIGN_TTL_SECONDS", ttl);
    }
    (server.start().await, client, bucket)
}

/// Kicks off `path`, polls to completion and returns the manifest.
async fn export(server: &Server, path: &str) -> serde_json::Value {
    let manifest =
        integration_tests::kick_off_and_wait(&http_client(), &format!("{}{}", server.base, path))
            .await;
    assert!(
        manifest["error"].as_array().is_some_and(Vec::is_empty),
        "no errors: {manifest}"
    );
    manifest
}

/// The manifest entry for `resource_type`: (file request URL, count).
fn entry(manifest: &serde_json::Value, resource_type: &str) -> (String, usize) {
    let e = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .find(|e| e["type"] == resource_type)
        .unwrap_or_else(|| panic!("no {resource_type} file in {manifest}"));
    (
        e["url"].as_str().expect("url").to_string(),
        e["count"].as_u64().expect("count") as usize,
    )
}

/// GET on a manifest file URL without following redirects: a 307 to a presigned URL on s3s-fs.
async fn presigned_location(file_url: &str, expires_seconds: u64) -> String {
    let resp = http_client_no_redirect()
        .get(file_url)
        .header("Accept", "application/fhir+ndjson")
        .send()
        .await
        .expect("file request");
    assert_eq!(resp.status(), 307, "GET {file_url}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let s = integration_tests::s3s();
    assert!(
        location.starts_with(&format!("{}/", s.endpoint)),
        "redirect to the s3s-fs endpoint: {location}"
    );
    for part in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256".to_string(),
        format!("X-Amz-Credential={}%2F", s.access_key),
        format!("X-Amz-Expires={expires_seconds}&"),
        "X-Amz-Signature=".to_string(),
    ] {
        assert!(location.contains(&part), "{part} in {location}");
    }
    location
}

/// A GET with a plain client: no Authorization header, nothing but the URL.
async fn plain_get(url: &str) -> (reqwest::StatusCode, String, String) {
    let resp = http_client().get(url).send().await.expect("GET");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, resp.text().await.expect("body"))
}

/// The URL serves the file: 200, ndjson, `count` lines of `resource_type`.
async fn assert_serves(url: &str, resource_type: &str, count: usize) {
    let (status, content_type, body) = plain_get(url).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    assert_eq!(content_type, NDJSON_CONTENT_TYPE, "GET {url}");
    let mut lines = 0;
    for line in body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("ndjson line is JSON");
        assert_eq!(v["resourceType"], resource_type, "GET {url}");
        lines += 1;
    }
    assert_eq!(
        lines, count,
        "GET {url}: line count equals the manifest count"
    );
}

/// s3s-fs refuses the URL with 403 and the S3 error `code`, and serves none of the file.
async fn assert_refused(url: &str, code: &str) {
    let (status, _, body) = plain_get(url).await;
    assert_eq!(status, 403, "GET {url} is refused: {body}");
    assert!(
        body.contains(&format!("<Code>{code}</Code>")),
        "GET {url}: expected S3 error {code}, got {body}"
    );
    assert!(!body.contains("resourceType"), "no data in the refusal");
}

/// `url` with the last character of its X-Amz-Signature changed.
fn with_signature_changed(url: &str) -> String {
    let start = url.find("X-Amz-Signature=").expect("signature") + "X-Amz-Signature=".len();
    let end = url[start..].find('&').map_or(url.len(), |i| start + i);
    let last = end - 1;
    let replacement = if &url[last..end] == "0" { "1" } else { "0" };
    let changed = format!("{}{replacement}{}", &url[..last], &url[end..]);
    assert_ne!(changed, url);
    changed
}

/// Sleeps until just after the next whole second. A presigned URL's X-Amz-Date has whole
/// seconds, so with a 1 s lifetime a URL signed late in a second could already be past its
/// expiry a few milliseconds later; signed right after a second starts, it has ~1 s left.
async fn at_start_of_a_second() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let to_next = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(to_next + Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_route_redirects_to_a_presigned_url_that_s3s_fs_serves_without_credentials() {
    let (server, client, bucket) = s3s_server(None).await;
    let manifest = export(&server, "/$export?_type=Patient,Observation").await;
    let (file_url, count) = entry(&manifest, "Patient");
    assert_eq!(count, PATIENTS, "manifest count");

    let location = presigned_location(&file_url, 300).await;
    assert_serves(&location, "Patient", count).await;

    // The bucket is not public: the same object without the presigned query is refused, so
    // the 200 above came from the signature.
    let (unsigned, _) = location.split_once('?').expect("query");
    let (status, _, body) = plain_get(unsigned).await;
    assert_eq!(status, 403, "unsigned GET {unsigned}: {body}");

    // Every file in the manifest downloads the same way.
    for e in manifest["output"].as_array().expect("output") {
        let t = e["type"].as_str().expect("type");
        let url = presigned_location(e["url"].as_str().expect("url"), 300).await;
        assert_serves(&url, t, e["count"].as_u64().expect("count") as usize).await;
    }

    // And the object is where the storage path says: bucket, prefix, job, file name.
    let key = unsigned
        .strip_prefix(&format!("{}/{bucket}/", integration_tests::s3s().endpoint))
        .expect("path-style URL");
    assert!(key.starts_with(&format!("{PREFIX}/")), "{key}");
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .expect("head object");
    assert_eq!(head.content_type(), Some(NDJSON_CONTENT_TYPE));
}

/// A client that sends `Accept-Encoding: gzip` (as curl --compressed, Python requests and most
/// HTTP libraries do) is sent to the file's gzip copy, which S3 serves with
/// `Content-Encoding: gzip`; a client that sends none gets the plain ndjson. Both decode to the
/// same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_accepting_clients_download_the_gzip_copy_and_others_plain_ndjson() {
    let (server, _client, _bucket) = s3s_server(None).await;
    let manifest = export(&server, "/$export?_type=Patient,Observation").await;
    for resource_type in ["Patient", "Observation"] {
        let (file_url, count) = entry(&manifest, resource_type);

        let location = presigned_location(&file_url, 300).await;
        let resp = http_client().get(&location).send().await.expect("GET");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get("content-encoding").is_none(),
            "plain download for a client without Accept-Encoding"
        );
        let plain = resp.bytes().await.expect("body");
        assert_eq!(plain.iter().filter(|&&b| b == b'\n').count(), count);

        let redirect = http_client_no_redirect()
            .get(&file_url)
            .header("Accept-Encoding", "gzip, deflate")
            .send()
            .await
            .expect("file request");
        assert_eq!(redirect.status(), 307, "GET {file_url} with gzip");
        assert_eq!(redirect.headers()["vary"], "accept-encoding");
        let gz_location = redirect.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let (object, _) = gz_location.split_once('?').expect("presigned query");
        assert!(
            object.ends_with(&format!("{resource_type}-0001.ndjson.gz")),
            "{object}"
        );
        let resp = http_client()
            .get(&gz_location)
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .expect("GET gzip copy");
        assert_eq!(resp.status(), 200, "GET {gz_location}");
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        assert_eq!(resp.headers()["content-type"], NDJSON_CONTENT_TYPE);
        let compressed = resp.bytes().await.expect("body");
        assert!(
            compressed.len() * 3 < plain.len(),
            "{resource_type}: {} gzip bytes for {} plain",
            compressed.len(),
            plain.len()
        );
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&compressed[..]),
            &mut inflated,
        )
        .expect("valid gzip");
        assert!(
            inflated == plain,
            "{resource_type}: the copy holds the same bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_url_with_a_changed_signature_or_object_key_is_refused() {
    let (server, _client, _bucket) = s3s_server(None).await;
    let manifest = export(&server, "/$export?_type=Patient,Observation").await;
    let (patient_url, patient_count) = entry(&manifest, "Patient");
    let (observation_url, observation_count) = entry(&manifest, "Observation");
    let patients = presigned_location(&patient_url, 300).await;
    let observations = presigned_location(&observation_url, 300).await;
    // Both genuine URLs work: what follows is refused because of the change, not the object.
    assert_serves(&patients, "Patient", patient_count).await;
    assert_serves(&observations, "Observation", observation_count).await;

    // One character of the signature changed.
    assert_refused(&with_signature_changed(&patients), "SignatureDoesNotMatch").await;

    // The Patient file's signature and query on the Observation file's key: another object
    // of the same export, which exists and which the signature does not cover.
    let (patient_path, patient_query) = patients.split_once('?').expect("query");
    let (observation_path, _) = observations.split_once('?').expect("query");
    assert_ne!(patient_path, observation_path);
    assert_refused(
        &format!("{observation_path}?{patient_query}"),
        "SignatureDoesNotMatch",
    )
    .await;

    // A one-character change of the object key (the file's sequence number).
    let renamed = patient_path.replacen("-0001.ndjson", "-0002.ndjson", 1);
    assert_ne!(renamed, patient_path, "file name pattern: {patient_path}");
    assert_refused(
        &format!("{renamed}?{patient_query}"),
        "SignatureDoesNotMatch",
    )
    .await;

    // The untouched URL still works afterwards.
    assert_serves(&patients, "Patient", patient_count).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_url_works_until_presign_ttl_seconds_and_is_refused_after() {
    // 1 s, the shortest lifetime PRESIGN_TTL_SECONDS gives (0 would be expired on arrival).
    let (server, _client, _bucket) = s3s_server(Some("1")).await;
    let manifest = export(&server, "/$export?_type=Patient").await;
    let (file_url, count) = entry(&manifest, "Patient");

    at_start_of_a_second().await;
    let location = presigned_location(&file_url, 1).await;
    assert_serves(&location, "Patient", count).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_refused(&location, "AccessDenied").await;

    // The manifest's file URL stays usable: asking again gives a fresh presigned URL.
    at_start_of_a_second().await;
    let fresh = presigned_location(&file_url, 1).await;
    assert_ne!(fresh, location, "a new URL with a new date and signature");
    assert_serves(&fresh, "Patient", count).await;
}

#[tokio::test]
async fn with_authorization_the_token_opens_the_redirect_and_the_presigned_url_needs_none() {
    let (db, data) = TestDb::with_generated(PATIENTS).await;
    let (client, bucket) = integration_tests::new_s3s_bucket().await;
    integration_tests::register_fixture_client(&db.pool, "s3-client", "system/*.read").await;
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(client, bucket.clone(), PREFIX.into()));
    let server = TestServer::on(db)
        .storage(format!("s3://{bucket}/{PREFIX}"), store)
        .env("AUTH", "smart")
        .env(
            "TOKEN_SIGNING_KEY",
            "presigned-test-signing-key-0123456789abcdef",
        )
        .env("MIN_POLL_INTERVAL_MS", "0")
        .start()
        .await;

    // A token the way a client gets one.
    let token_url = format!("{}/auth/token", server.base);
    let pem = std::fs::read(integration_tests::auth_fixture("es384.pem")).expect("pem");
    let assertion = shared::auth::keys::client_assertion(&pem, "s3-client", &token_url, None)
        .expect("assertion");
    let token = shared::auth::keys::request_token(&token_url, &assertion, "system/*.read")
        .await
        .expect("token")["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();

    let manifest = integration_tests::kick_off_and_wait(
        &integration_tests::bearer_client(&token),
        &format!("{}/$export?_type=Patient", server.base),
    )
    .await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let (file_url, count) = entry(&manifest, "Patient");
    assert_eq!(count, data.patient_ids().len());

    // No token: 401 and no Location to leak.
    let resp = http_client_no_redirect()
        .get(&file_url)
        .send()
        .await
        .expect("file request");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("location").is_none());
    // With the token: a redirect whose URL carries no trace of the token.
    let resp = http_client_no_redirect()
        .get(&file_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("file request");
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(!location.contains(&token));
    assert!(location.starts_with(&integration_tests::s3s().endpoint));
    // A fresh client without any Authorization header downloads it.
    let body = reqwest::Client::new()
        .get(&location)
        .send()
        .await
        .expect("presigned GET");
    assert_eq!(body.status(), 200);
    let text = body.text().await.expect("ndjson");
    assert_eq!(text.lines().count(), count);
}
