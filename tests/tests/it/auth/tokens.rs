//! The token endpoint: client assertions, OAuth errors, JWKS URLs and their caching.

use super::*;

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
        ("foreign jku", with_jku, "unknown client"),
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

    // An unknown client, a key it did not register, a foreign jku and an iss with a NUL (a 500
    // before: Postgres refuses U+0000) get the very same answer: no one can tell which client ids
    // exist.
    let answer = |resp: reqwest::Response| async move {
        let status = resp.status();
        let cache = resp.headers()["cache-control"].clone();
        (status, cache, resp.text().await.expect("body"))
    };
    let mut header = Header::new(Algorithm::RS384);
    header.jku = Some("https://attacker.example/jwks.json".into());
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(auth_fixture("rs384.pem")).expect("pem"))
        .expect("key");
    let nul = jsonwebtoken::encode(
        &Header::new(Algorithm::RS384),
        &claims("nobody\u{0}", &token_url),
        &rsa,
    )
    .expect("sign");
    let reference = answer(
        token_request(
            base,
            &assertion("rs384", claims("nobody", &token_url), None),
            "system/*.read",
        )
        .await,
    )
    .await;
    assert_eq!(reference.0, 401);
    assert!(reference.2.contains("invalid_client"), "{}", reference.2);
    for (what, a) in [
        (
            "a key the client did not register",
            assertion("other", claims(ALL, &token_url), Some("test-rs384")),
        ),
        (
            "a key the client did not register, without kid",
            assertion("other", claims(ALL, &token_url), None),
        ),
        (
            "a foreign jku",
            jsonwebtoken::encode(&header, &claims(ALL, &token_url), &rsa).expect("sign"),
        ),
        (
            "a kid the client does not have",
            assertion("rs384", claims(ALL, &token_url), Some("no-such-kid")),
        ),
        ("a NUL in iss", nul),
    ] {
        let got = answer(token_request(base, &a, "system/*.read").await).await;
        assert_eq!(got, reference, "{what}");
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
    // followed; a URL where nothing answers HTTP is given up. The client is told none of it (not
    // the URL, nor whether it is reachable): the answer to an unknown client; the operator
    // finds the reason in the log.
    let unknown = oauth_error(
        token_request(
            base,
            &assertion("es384", claims("nobody", &token_url), None),
            "system/*.read",
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    let (ok_url, _) = jwks_server("no-store").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/jwks.json", l.local_addr().expect("addr"))
    };
    for url in [
        ok_url.replace("/jwks.json", "/huge.json"),
        ok_url.replace("/jwks.json", "/elsewhere.json"),
        closed,
    ] {
        let id = format!("{BY_URL}-{}", uuid::Uuid::new_v4());
        register_by_url(&server, &id, &url).await;
        let a = assertion("es384", claims(&id, &token_url), Some("test-es384"));
        let d = oauth_error(
            token_request(base, &a, "system/*.read").await,
            401,
            "invalid_client",
        )
        .await;
        assert_eq!(d, unknown, "{url}");
        assert!(
            !d.contains("127.0.0.1") && !d.contains("http"),
            "{url}: {d}"
        );
    }
}
