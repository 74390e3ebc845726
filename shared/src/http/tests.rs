use super::*;

fn config(vars: &[(&str, &str)]) -> Config {
    Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| (k == "DATABASE_URL").then(|| "postgres://x".into()))
    })
    .unwrap()
}

fn spoofed(path: &str) -> Request {
    http::Request::get(format!("http://other.example{path}"))
        .header("host", "other.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "other.example")
        .body(Bytes::new())
        .unwrap()
}

#[test]
fn the_base_comes_from_configuration_and_forwarded_headers_only_when_trusted() {
    let req = spoofed("/fhir/$export");
    let c = config(&[("PUBLIC_BASE_URL", "https://fhir.example/fhir")]);
    assert_eq!(
        base_url(&c, &req, "/fhir").unwrap(),
        "https://fhir.example/fhir"
    );
    assert!(
        base_url(&c, &req, "").is_err(),
        "routes live under the base path"
    );
    assert!(base_url(&c, &req, "/other").is_err());
    // No base configured and headers not trusted: nothing from the request is used.
    assert_eq!(canonical_base(&config(&[]), &req), None);
    let trusted = config(&[("TRUST_FORWARDED_HEADERS", "true")]);
    assert_eq!(
        canonical_base(&trusted, &req).as_deref(),
        Some("https://other.example")
    );
    let hostile = http::Request::get("http://x/$export")
        .header("x-forwarded-proto", "javascript")
        .header("x-forwarded-host", "a\"b")
        .body(Bytes::new())
        .unwrap();
    assert_eq!(canonical_base(&trusted, &hostile), None);
}

#[test]
fn server_errors_hide_details_but_client_errors_explain() {
    let r = ApiError::Internal("password=secret".into()).into_response();
    assert_eq!(r.status(), 500);
    let Body::Full(b) = r.body() else { panic!() };
    assert!(!String::from_utf8_lossy(b).contains("secret"));
    let r = ApiError::BadRequest("bad _type".into()).into_response();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON);
}
