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

async fn access_token(base: &str, client: &str, scope: &str) -> String {
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

#[tokio::test]
async fn rs384_and_es384_clients_get_short_lived_tokens_that_open_every_route() {
    let (server, data) = server().await;
    let base = &server.base;
    let token_url = format!("{base}/auth/token");
    for (key, kid) in [("rs384", "test-rs384"), ("es384", "test-es384")] {
        let resp = token_request(
            base,
            &assertion(key, claims(ALL, &token_url), Some(kid)),
            "system/*.read",
        )
        .await;
        assert_eq!(resp.status(), 200, "{key}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["scope"], "system/*.read");
        let ttl = body["expires_in"].as_u64().expect("expires_in");
        assert!(ttl > 0 && ttl <= 300);
    }
    // The supported subset of what is asked is granted, in the syntax asked for.
    let a = assertion("es384", claims(ALL, &token_url), None);
    let resp = token_request(base, &a, "system/*.cruds launch/patient openid").await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["scope"], "system/*.rs");

    let token = access_token(base, ALL, "system/*.read").await;
    let status_url = kickoff(&format!("{base}/$export?_type=Patient,Condition"), &token).await;
    let manifest = wait_manifest(&status_url, &token).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    // Downloads need the token too.
    let first = manifest["output"][0]["url"].as_str().expect("url");
    assert_eq!(get(first, None).await.status(), 401);
    let counts = download_counts(&bearer_client(&token), &manifest, "output").await;
    assert_eq!(counts["Patient"], data.patient_ids().len());
    assert_eq!(counts["Condition"], data.count_by_type()["Condition"]);
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_requests_and_assertions_with_oauth_errors() {
    let (server, _) = server().await;
    let base = &server.base;
    let token_url = format!("{base}/auth/token");
    let good = || assertion("rs384", claims(ALL, &token_url), Some("test-rs384"));

    // Form-level errors.
    let resp = http_client()
        .post(&token_url)
        .form(&[("grant_type", "password"), ("client_assertion", &good())])
        .send()
        .await
        .expect("req");
    oauth_error(resp, 400, "unsupported_grant_type").await;
    let resp = http_client()
        .post(&token_url)
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("req");
    oauth_error(resp, 400, "invalid_request").await;
    oauth_error(
        token_request(base, &good(), "").await,
        400,
        "invalid_request",
    )
    .await;
    oauth_error(
        token_request(base, &good(), "patient/*.read").await,
        400,
        "invalid_scope",
    )
    .await;

    // Assertions: each refused as invalid_client (401).
    let mut c = claims(ALL, &token_url);
    c["exp"] = json!(now() - 120);
    let expired = assertion("rs384", c, None);
    let mut c = claims(ALL, &token_url);
    c["exp"] = json!(now() + 3600);
    let too_long = assertion("rs384", c, None);
    let mut c = claims(ALL, &token_url);
    c["sub"] = json!(LIMITED);
    let iss_not_sub = assertion("rs384", c, None);
    let mut c = claims(ALL, &token_url);
    c.as_object_mut().expect("obj").remove("jti");
    let no_jti = assertion("rs384", c, None);
    let other_audience = assertion(
        "rs384",
        claims(ALL, "https://elsewhere.example/token"),
        None,
    );
    let unknown_client = assertion("rs384", claims("nobody", &token_url), None);
    let mut c = claims(ALL, &token_url);
    c["iat"] = json!(now() + 120);
    let iat_future = assertion("rs384", c, None);
    let mut c = claims(ALL, &token_url);
    c["nbf"] = json!(now() + 120);
    let nbf_future = assertion("rs384", c, None);
    let unregistered_key = assertion("other", claims(ALL, &token_url), Some("test-rs384"));
    // alg none: no signature at all.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(ALL, &token_url))
    );
    // HS256 "signed" with the client's public key as the HMAC secret (algorithm confusion).
    let public_pem = std::fs::read_to_string(auth_fixture("public.jwks")).expect("jwks");
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(ALL, &token_url),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .expect("sign");
    let mut jku_header = Header::new(Algorithm::RS384);
    jku_header.jku = Some("https://attacker.example/jwks.json".into());
    let with_jku = jsonwebtoken::encode(
        &jku_header,
        &claims(ALL, &token_url),
        &EncodingKey::from_rsa_pem(&std::fs::read(auth_fixture("rs384.pem")).expect("pem"))
            .expect("key"),
    )
    .expect("sign");
    for (what, a, needle) in [
        ("expired", expired, "expired"),
        ("exp too far ahead", too_long, "5 minutes"),
        ("iss != sub", iss_not_sub, "iss and sub"),
        ("no jti", no_jti, "jti"),
        ("another audience", other_audience, "aud"),
        ("unknown client", unknown_client, "unknown client"),
        ("iat in the future", iat_future, "iat is in the future"),
        ("nbf in the future", nbf_future, "nbf is in the future"),
        ("unregistered key", unregistered_key, "signature"),
        ("alg none", alg_none, "RS384"),
        ("HS256 with the public key", hs256, "RS384"),
        ("foreign jku", with_jku, "jku"),
        ("not a JWT", "not-a-jwt".to_string(), "JWT"),
    ] {
        let d = oauth_error(
            token_request(base, &a, "system/*.read").await,
            401,
            "invalid_client",
        )
        .await;
        assert!(d.contains(needle), "{what}: {d}");
    }

    // A replayed assertion (same jti) is refused the second time.
    let once = good();
    assert_eq!(
        token_request(base, &once, "system/*.read").await.status(),
        200
    );
    let d = oauth_error(
        token_request(base, &once, "system/*.read").await,
        401,
        "invalid_client",
    )
    .await;
    assert!(d.contains("already used"), "{d}");
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

#[tokio::test]
async fn export_routes_need_a_valid_bearer_token_and_conformance_routes_do_not() {
    let (server, _) = server().await;
    let base = &server.base;
    let token = access_token(base, ALL, "system/*.read").await;
    let status_url = kickoff(&format!("{base}/$export?_type=Patient"), &token).await;
    let manifest = wait_manifest(&status_url, &token).await;
    let file_url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();

    let bad_tokens = [
        ("garbage", "not.a.token".to_string()),
        ("expired", forged(SIGNING_KEY.as_bytes(), base, now() - 60)),
        (
            "another audience",
            forged(
                SIGNING_KEY.as_bytes(),
                "http://other.example/fhir",
                now() + 60,
            ),
        ),
        (
            "another key",
            forged(b"some-other-key-0123456789abcdef-0123", base, now() + 60),
        ),
        (
            "alg none",
            format!("{}.e30.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"),
        ),
    ];
    for url in [
        format!("{base}/$export"),
        status_url.clone(),
        file_url.clone(),
    ] {
        let resp = get(&url, None).await;
        assert_eq!(resp.status(), 401, "{url} without a token");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .expect("hdr")
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let oo: Value = resp.json().await.expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        for (what, t) in &bad_tokens {
            let resp = get(&url, Some(t)).await;
            assert_eq!(resp.status(), 401, "{url} with a {what} token");
            let challenge = resp.headers()["www-authenticate"]
                .to_str()
                .expect("hdr")
                .to_string();
            assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        }
    }
    // Conformance routes are public; the CapabilityStatement names the token endpoint.
    let cs: Value = get(&format!("{base}/metadata"), None)
        .await
        .json()
        .await
        .expect("cs");
    let oauth = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        oauth["extension"][0]["valueUri"],
        format!("{base}/auth/token")
    );
    for url in [
        format!("{base}/.well-known/smart-configuration"),
        format!(
            "{}/.well-known/smart-configuration",
            base.trim_end_matches('/')
        ),
    ] {
        let resp = get(&url, None).await;
        assert_eq!(resp.status(), 200);
        let conf: Value = resp.json().await.expect("json");
        assert_eq!(conf["token_endpoint"], format!("{base}/auth/token"));
        assert_eq!(conf["grant_types_supported"], json!(["client_credentials"]));
        assert_eq!(
            conf["token_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
        assert_eq!(
            conf["token_endpoint_auth_signing_alg_values_supported"],
            json!(["RS384", "ES384"])
        );
    }
}

#[tokio::test]
async fn a_client_cannot_see_cancel_or_download_another_clients_export() {
    let (server, _) = server().await;
    let base = &server.base;
    let a = access_token(base, ALL, "system/*.read").await;
    let b = access_token(base, LIMITED, "system/*.read").await;
    let status_url = kickoff(&format!("{base}/$export?_type=Patient"), &a).await;
    let manifest = wait_manifest(&status_url, &a).await;
    let file_url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();

    let unknown = status_url.replace(
        status_url.rsplit('=').next().expect("id"),
        &uuid::Uuid::new_v4().to_string(),
    );
    let unknown_body = get(&unknown, Some(&b)).await.text().await.expect("body");
    let resp = get(&status_url, Some(&b)).await;
    assert_eq!(resp.status(), 404);
    // Indistinguishable from a job that does not exist.
    assert_eq!(resp.text().await.expect("body"), unknown_body);
    let download = |t: &str| {
        http_client()
            .get(&file_url)
            .header("Accept", "application/fhir+ndjson")
            .bearer_auth(t.to_string())
            .send()
    };
    assert_eq!(download(&b).await.expect("download").status(), 404);
    let del = http_client()
        .delete(&status_url)
        .bearer_auth(&b)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 404);
    // The owner still has it.
    assert_eq!(get(&status_url, Some(&a)).await.status(), 200);
    assert_eq!(download(&a).await.expect("download").status(), 200);
}

#[tokio::test]
async fn scopes_limit_the_exported_types() {
    let (server, data) = server().await;
    let base = &server.base;
    let token = access_token(base, LIMITED, "system/*.read").await;
    let c = bearer_client(&token);

    // A type outside the scopes: 403.
    let resp = get(
        &format!("{base}/$export?_type=Patient,Observation"),
        Some(&token),
    )
    .await;
    assert_eq!(resp.status(), 403);
    let oo: Value = resp.json().await.expect("json");
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .contains("Observation"));

    // Lenient: narrowed and reported.
    let resp = http_client()
        .get(format!("{base}/$export?_type=Patient,Observation"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let manifest = wait_manifest(&status_url, &token).await;
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(
        counts,
        [("Patient".to_string(), data.patient_ids().len())].into()
    );
    assert_eq!(manifest["error"].as_array().map(Vec::len), Some(1));

    // No _type: only the permitted types, at system and Patient level.
    for path in ["$export", "Patient/$export"] {
        let status_url = kickoff(&format!("{base}/{path}"), &token).await;
        let manifest = wait_manifest(&status_url, &token).await;
        let counts: BTreeMap<String, usize> = download_counts(&c, &manifest, "output").await;
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            ["Condition", "Patient"],
            "{path}"
        );
    }
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

#[tokio::test]
async fn jwks_urls_are_fetched_and_cached_as_cache_control_says() {
    let (server, _) = server().await;
    let base = &server.base;
    let token_url = format!("{base}/auth/token");
    // no-store: fetched again, but at most once per JWKS URL every 10 s (jwks::MIN_REFETCH), so
    // a burst of assertions (forged ones included) costs one fetch.
    for (cache_control, expected_fetches) in [("max-age=60", 1), ("no-store", 1)] {
        let (url, hits) = jwks_server(cache_control).await;
        let id = format!("{BY_URL}-{expected_fetches}");
        register_by_url(&server, &id, &url).await;
        for _ in 0..3 {
            let mut header_claims = claims(&id, &token_url);
            header_claims["iss"] = json!(id);
            let pem = std::fs::read(auth_fixture("es384.pem")).expect("pem");
            let mut header = Header::new(Algorithm::ES384);
            header.jku = Some(url.clone());
            header.kid = Some("test-es384".into());
            let a = jsonwebtoken::encode(
                &header,
                &header_claims,
                &EncodingKey::from_ec_pem(&pem).expect("key"),
            )
            .expect("sign");
            let resp = token_request(base, &a, "system/*.read").await;
            assert_eq!(resp.status(), 200, "{cache_control}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            expected_fetches,
            "{cache_control}"
        );
    }

    // A JWKS that never ends is abandoned past the size cap; a redirect to another host is not
    // followed.
    for (path, needle) in [("/huge.json", "too large"), ("/elsewhere.json", "302")] {
        let (ok_url, _) = jwks_server("no-store").await;
        let url = ok_url.replace("/jwks.json", path);
        let id = format!("{BY_URL}{}", path.replace(['/', '.'], "-"));
        register_by_url(&server, &id, &url).await;
        let a = assertion("es384", claims(&id, &token_url), Some("test-es384"));
        let d = oauth_error(
            token_request(base, &a, "system/*.read").await,
            401,
            "invalid_client",
        )
        .await;
        assert!(d.contains(needle), "{path}: {d}");
    }
}

/// Removing a client stops its tokens at once, not when they expire.
#[tokio::test]
async fn a_removed_clients_tokens_stop_working_at_once() {
    let (server, _) = server().await;
    let token = access_token(&server.base, LIMITED, "system/*.read").await;
    let c = integration_tests::bearer_client(&token);
    let url = format!("{}/$export?_type=Patient", server.base);
    let resp = c
        .get(&url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    assert!(clients::delete_client(&server.state.pool, LIMITED)
        .await
        .expect("remove"));
    for resp in [
        c.get(&url)
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .expect("kick-off"),
        c.get(&status_url).send().await.expect("status"),
    ] {
        assert_eq!(resp.status(), 401);
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .expect("challenge")
            .contains("invalid_token"));
    }
}

#[tokio::test]
async fn clients_are_registered_with_the_cli() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| {
        std::process::Command::new(bulk_export_bin())
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("AUTH", "off")
            .output()
            .expect("run")
    };
    let jwks = auth_fixture("public.jwks");
    let out = run(&[
        "client",
        "add",
        "--jwks",
        jwks.to_str().expect("path"),
        "--scope",
        "system/Patient.read,system/Observation.rs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stored = clients::get_client(&db.pool, &id)
        .await
        .expect("db")
        .expect("client");
    assert_eq!(stored.scopes, "system/Patient.read system/Observation.rs");
    assert_eq!(stored.jwks, Some(fixture_public_jwks()));
    let list = run(&["client", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));

    // Private keys, unsupported scopes and non-URLs are refused.
    let private = auth_fixture("rs384.jwks");
    let out = run(&["client", "add", "--jwks", private.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("private"));
    let out = run(&[
        "client",
        "add",
        "--jwks",
        jwks.to_str().expect("path"),
        "--scope",
        "user/*.read",
    ]);
    assert!(!out.status.success());
    let out = run(&["client", "add", "--jwks-url", "file:///etc/passwd"]);
    assert!(!out.status.success());
    let out = run(&["client", "remove", &id]);
    assert!(out.status.success());
    assert!(clients::get_client(&db.pool, &id)
        .await
        .expect("db")
        .is_none());
}

// Multi-threaded: the CLI's blocking runs must not stall the in-process server it talks to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_flow_keygen_register_token_export_works_from_the_cli() {
    let (server, data) = server().await;
    let dir = temp_dir().join("my-client");
    let bin = bulk_export_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .env("DATABASE_URL", server_db_url(&server))
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let d = dir.to_str().expect("path");
    run(&["client", "keygen", "--out", d]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("private.pem"))
            .expect("pem")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );
    }
    let id = run(&["client", "add", "--jwks", &format!("{d}/public.jwks")]);
    let token_url = format!("{}/auth/token", server.base);
    // The token helper needs no database.
    let out = std::process::Command::new(&bin)
        .args([
            "client",
            "token",
            "--client-id",
            &id,
            "--key",
            &format!("{d}/private.pem"),
            "--token-url",
            &token_url,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status_url = kickoff(&format!("{}/$export?_type=Patient", server.base), &token).await;
    let manifest = wait_manifest(&status_url, &token).await;
    assert_eq!(manifest["output"][0]["count"], data.patient_ids().len());
}

fn server_db_url(server: &Server) -> String {
    server.state.config.database_url.clone()
}

/// The server's identity comes from configuration, never from the request: a spoofed Host and
/// X-Forwarded-Proto change neither the URLs it answers with nor the audience it accepts, and
/// routes exist only under the configured base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_url_is_configured_not_taken_from_host_or_forwarded_headers() {
    let (server, _data) = server().await;
    let c = http_client();
    let spoof = |rb: reqwest::RequestBuilder| {
        rb.header("Host", "other.example")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "other.example")
    };

    // An assertion made for another server's token URL, sent with that server's Host: refused.
    let foreign = assertion(
        "rs384",
        claims(ALL, "https://other.example/auth/token"),
        Some("test-rs384"),
    );
    let resp = spoof(c.post(format!("{}/auth/token", server.base)))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", foreign.as_str()),
            ("scope", "system/*.read"),
        ])
        .send()
        .await
        .expect("token request");
    oauth_error(resp, 401, "invalid_client").await;

    // smart-configuration and Content-Location name the configured base whatever Host says.
    let conf: Value = spoof(c.get(format!("{}/.well-known/smart-configuration", server.base)))
        .send()
        .await
        .expect("smart-configuration")
        .json()
        .await
        .expect("json");
    assert_eq!(conf["issuer"], server.base.as_str());
    assert_eq!(
        conf["token_endpoint"],
        format!("{}/auth/token", server.base)
    );
    // Discovery under [base]/Patient (smart-fetch's Patient level) gives the same document.
    let patient_conf: Value = c
        .get(format!(
            "{}/Patient/.well-known/smart-configuration",
            server.base
        ))
        .send()
        .await
        .expect("smart-configuration")
        .json()
        .await
        .expect("json");
    assert_eq!(patient_conf, conf);

    let token = access_token(&server.base, ALL, "system/*.read").await;
    let resp = spoof(c.get(format!("{}/$export?_type=Patient", server.base)))
        .header("Authorization", format!("Bearer {token}"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"].to_str().expect("loc");
    assert!(
        location.starts_with(&format!("{}/$exportstatus?_id=", server.base)),
        "{location}"
    );

    // Anything before a route that is not the configured base path is no route at all.
    for path in [
        "/anything/$export",
        "/anything/Patient/$export",
        "/x/$exportstatus?_id=1",
        "/x/metadata",
        "/x/auth/token",
    ] {
        let resp = c
            .get(format!("{}{path}", server.base))
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.expect("OperationOutcome");
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
    }
}
