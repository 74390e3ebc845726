//! SMART Backend Services authorization over real HTTP: the token endpoint, bearer tokens on
//! every export route, per-client jobs and scope-limited types. Client keys are the TEST-ONLY
//! fixtures in tests/fixtures/auth (made by make-keys.py there).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{
    auth_fixture, bearer_client, bulk_export_bin, download_counts, fixture_public_jwks,
    http_client, register_fixture_client, temp_dir, Server, TestDb, TestServer,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use shared::db::clients::{self, Client};

const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef-0123456789";
const ALL: &str = "client-all";
const LIMITED: &str = "client-limited";
const BY_URL: &str = "client-by-url";

async fn server() -> (Server, integration_tests::data::DataSet) {
    let (db, data) = TestDb::with_generated(6).await;
    for (id, scopes) in [
        (ALL, "system/*.read"),
        (LIMITED, "system/Patient.read system/Condition.read"),
    ] {
        register_fixture_client(&db.pool, id, scopes).await;
    }
    let server = TestServer::on(db)
        .env("AUTH", "smart")
        .env("MIN_POLL_INTERVAL_MS", "0")
        .env("TOKEN_SIGNING_KEY", SIGNING_KEY)
        .start()
        .await;
    (server, data)
}

/// Registers client `id` whose keys are at the JWKS URL `url`.
async fn register_by_url(server: &Server, id: &str, url: &str) {
    clients::insert_client(
        &server.state.pool,
        &Client {
            client_id: id.to_string(),
            jwks: None,
            jwks_url: Some(url.to_string()),
            scopes: "system/*.read".into(),
        },
    )
    .await
    .expect("register");
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A client assertion signed with a fixture key (`rs384`, `es384` or `other`).
fn assertion(key: &str, claims: Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(auth_fixture(&format!("{key}.pem"))).expect("pem");
    let (alg, enc) = if key == "es384" {
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&pem).expect("ec key"),
        )
    } else {
        (
            Algorithm::RS384,
            EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
        )
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &enc).expect("sign")
}

fn claims(client: &str, aud: &str) -> Value {
    json!({"iss": client, "sub": client, "aud": aud, "exp": now() + 240,
           "jti": uuid::Uuid::new_v4().to_string()})
}

async fn token_request(base: &str, assertion: &str, scope: &str) -> reqwest::Response {
    http_client()
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token request")
}

pub(crate) async fn access_token(base: &str, client: &str, scope: &str) -> String {
    let a = assertion(
        "rs384",
        claims(client, &format!("{base}/auth/token")),
        Some("test-rs384"),
    );
    let resp = token_request(base, &a, scope).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_string()
}

async fn oauth_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], code, "{body}");
    body["error_description"].as_str().unwrap_or("").to_string()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http_client()
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

async fn wait_manifest(status_url: &str, token: &str) -> Value {
    let done = integration_tests::poll(
        &integration_tests::bearer_client(token),
        status_url,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.status(), 200);
    done.json().await.expect("manifest")
}

async fn kickoff(base_url: &str, token: &str) -> String {
    let resp = get(base_url, Some(token)).await;
    assert_eq!(
        resp.status(),
        202,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string()
}

/// An access token signed like ours, with chosen claims and key.
fn forged(key: &[u8], aud: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": aud, "aud": aud, "sub": ALL, "exp": exp, "iat": now() - 10,
                "jti": "x", "scope": "system/*.read"}),
        &EncodingKey::from_secret(key),
    )
    .expect("sign")
}

/// A JWKS URL server counting its requests, answering with `cache_control`.
async fn jwks_server(cache_control: &'static str) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let body = fixture_public_jwks().to_string();
    let huge_hits = hits.clone();
    let app = axum::Router::new()
        .route(
            "/huge.json",
            axum::routing::get(move || {
                huge_hits.fetch_add(1, Ordering::SeqCst);
                // 64 MiB streamed without a Content-Length: the reader must stop early.
                let chunks =
                    futures::stream::iter((0..1024).map(|_| {
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 * 1024]))
                    }));
                async move { axum::body::Body::from_stream(chunks) }
            }),
        )
        .route(
            "/elsewhere.json",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [("location", "http://localhost:1/jwks.json")],
                )
            }),
        )
        .route(
            "/jwks.json",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move {
                    (
                        [
                            ("content-type", "application/json"),
                            ("cache-control", cache_control),
                        ],
                        body,
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks.json"), hits)
}

fn server_db_url(server: &Server) -> String {
    server.state.config.database_url.clone()
}

mod registered;
mod routes;
mod tokens;
mod views;
