//! Bearer tokens on the export routes: who may see what, scopes, and the base URL tokens are issued for.

use super::*;

/// A Patient export by the holder of `token`, finished: its status URL and its first file's URL.
async fn exported_patients(base: &str, token: &str) -> (String, String) {
    let status_url = kickoff(&format!("{base}/$export?_type=Patient"), token).await;
    let manifest = wait_manifest(&status_url, token).await;
    let file_url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();
    (status_url, file_url)
}

#[tokio::test]
async fn export_routes_need_a_valid_bearer_token_and_conformance_routes_do_not() {
    let (server, _) = server().await;
    let base = &server.base;
    let token = access_token(base, ALL, "system/*.read").await;
    let (status_url, file_url) = exported_patients(base, &token).await;

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
    let (status_url, file_url) = exported_patients(base, &a).await;

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
