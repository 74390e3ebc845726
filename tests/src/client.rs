//! The client side of the tests: HTTP clients, kick-off, polling, manifests, downloads, and the fixture clients of authorization.

use super::*;

/// A file of tests/fixtures/auth: TEST-ONLY client keys (made by make-keys.py there).
pub fn auth_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name)
}

/// The public JWKS of the fixture keys (`rs384`, `es384`).
pub fn fixture_public_jwks() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(auth_fixture("public.jwks")).expect("jwks"))
        .expect("json")
}

/// Registers a SMART client with the fixture keys and these scopes.
pub async fn register_fixture_client(pool: &Pool, client_id: &str, scopes: &str) {
    shared::db::clients::insert_client(
        pool,
        &shared::db::clients::Client {
            client_id: client_id.into(),
            jwks: Some(fixture_public_jwks()),
            jwks_url: None,
            scopes: scopes.into(),
        },
    )
    .await
    .expect("register client");
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request (and, like
/// reqwest, drops it on redirects to another host).
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// An HTTP client that follows redirects (as bulk-data clients do) and sends no auth header.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A client that does not follow redirects, to inspect them.
pub fn http_client_no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Sends `request`, asserts `status` and a FHIR JSON body (`application/fhir+json`); the body.
pub async fn fhir_json(request: reqwest::RequestBuilder, status: u16) -> serde_json::Value {
    let resp = request.send().await.expect("request");
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    resp.json().await.expect("a JSON body")
}

/// Kicks off an export with the standard headers; returns the response.
pub async fn kickoff(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off request")
}

/// Polls a status URL until it stops answering 202; returns the final response.
pub async fn poll(
    client: &reqwest::Client,
    status_url: &str,
    timeout: Duration,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let resp = client.get(status_url).send().await.expect("status request");
        if resp.status() != 202 {
            return resp;
        }
        assert!(
            resp.headers().get("x-progress").is_some(),
            "202 status without X-Progress"
        );
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("retry-after")
            .parse()
            .expect("Retry-After is integer seconds");
        assert!(retry >= 1);
        assert!(
            std::time::Instant::now() < deadline,
            "export did not finish in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job id of a status URL (`…/$exportstatus?_id=<uuid>`).
pub fn job_id_of(status_url: &str) -> uuid::Uuid {
    status_url
        .rsplit('=')
        .next()
        .expect("an _id")
        .parse()
        .expect("a job id")
}

/// The status URL of an accepted kick-off (asserts the 202 and its Content-Location).
pub async fn status_url_of(resp: reqwest::Response) -> String {
    let status = resp.status();
    let location = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(
        status,
        202,
        "kick-off accepted: {}",
        resp.text().await.unwrap_or_default()
    );
    location.expect("a 202 kick-off has a Content-Location")
}

/// The manifest of an accepted kick-off: polls its status URL until done, asserting the 200.
pub async fn manifest_of(
    client: &reqwest::Client,
    kickoff: reqwest::Response,
) -> serde_json::Value {
    let status_url = status_url_of(kickoff).await;
    let done = poll(client, &status_url, Duration::from_secs(60)).await;
    assert_eq!(done.status(), 200, "the export of {status_url} completes");
    done.json().await.expect("manifest")
}

/// Kicks off `url` (GET with the standard headers) and waits for its manifest: the one
/// "kick off → poll → manifest" of the tests.
pub async fn kick_off_and_wait(client: &reqwest::Client, url: &str) -> serde_json::Value {
    manifest_of(client, kickoff(client, url).await).await
}

/// The text of a download (following redirects, as a client would).
pub async fn download_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .expect("download")
        .text()
        .await
        .expect("body")
}

/// Every line of every file of a manifest's `output`, as downloaded (following redirects).
pub async fn download_lines(client: &reqwest::Client, manifest: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in manifest["output"].as_array().expect("output") {
        let text = download_text(client, entry["url"].as_str().expect("url")).await;
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

/// Downloads every file of a manifest's `output` (following redirects, as a client would) and
/// returns resource counts per type, checking that each line's resourceType matches the entry.
pub async fn download_counts(
    client: &reqwest::Client,
    manifest: &serde_json::Value,
    key: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for entry in manifest[key].as_array().expect("array") {
        let t = entry["type"].as_str().expect("type");
        let url = entry["url"].as_str().expect("url");
        let resp = client
            .get(url)
            .header("Accept", "application/fhir+ndjson")
            .send()
            .await
            .expect("download");
        assert_eq!(resp.status(), 200, "download {url}");
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert!(
            ct.starts_with("application/fhir+ndjson"),
            "content type {ct}"
        );
        let text = resp.text().await.expect("body");
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("ndjson line is JSON");
            assert_eq!(v["resourceType"], t, "line type matches manifest entry");
            n += 1;
        }
        assert_eq!(
            n,
            entry["count"].as_u64().expect("count") as usize,
            "{url} count"
        );
        *out.entry(t.to_string()).or_default() += n;
    }
    out
}
