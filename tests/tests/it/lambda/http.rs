//! The HTTP functions behind API Gateway (HTTP API v2 and REST API v1 events): the token function, the base, authorization and the api function.

use super::*;

#[tokio::test]
async fn the_token_function_answers_api_gateway_events() {
    let db = TestDb::new().await;
    let config = integration_tests::config_with(
        &db,
        &[(
            "TOKEN_SIGNING_KEY",
            "lambda-test-signing-key-0123456789abcdef",
        )],
    );
    let state = shared::app::assemble(
        Function::Token,
        config,
        db.pool.clone(),
        Arc::new(LocalStore::new(temp_dir()).expect("store")),
        Arc::new(shared::queue::NoQueue),
    );
    let base = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com";

    // The shipped event: smart-configuration names the token endpoint under the API's host.
    let resp = answer(
        Function::Token,
        &state,
        &serde_json::from_str::<serde_json::Value>(&event("token-smart-configuration.json"))
            .expect("json"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let conf = json_of(resp);
    assert_eq!(conf["token_endpoint"], format!("{base}/auth/token"));

    // A token request as API Gateway delivers it (form body), from a registered client.
    integration_tests::register_fixture_client(&db.pool, "lambda-client", "system/*.read").await;
    let assertion = shared::auth::keys::client_assertion(
        &std::fs::read(integration_tests::auth_fixture("rs384.pem")).expect("pem"),
        "lambda-client",
        &format!("{base}/auth/token"),
        Some("test-rs384"),
    )
    .expect("assertion");
    let form: String = form_body(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", shared::auth::token::ASSERTION_TYPE),
        ("client_assertion", &assertion),
        ("scope", "system/*.read"),
    ]);
    let mut ev: serde_json::Value =
        serde_json::from_str(&event("token-smart-configuration.json")).expect("json");
    ev["routeKey"] = "POST /auth/token".into();
    ev["rawPath"] = "/auth/token".into();
    ev["requestContext"]["http"]["method"] = "POST".into();
    ev["requestContext"]["http"]["path"] = "/auth/token".into();
    ev["headers"]["content-type"] = "application/x-www-form-urlencoded".into();
    ev["body"] = form.into();
    let resp = answer(Function::Token, &state, &ev).await;
    assert_eq!(resp.status(), 200);
    let token = json_of(resp);
    assert_eq!(token["token_type"], "bearer");
    let access = token["access_token"].as_str().expect("token");
    let principal = shared::auth::verify_access_token(
        b"lambda-test-signing-key-0123456789abcdef",
        base,
        access,
    )
    .expect("a token for this API");
    assert_eq!(principal.client_id, "lambda-client");
}

/// In Lambda the base is the domain API Gateway reports in the request context, never the
/// request's Host or forwarded headers; a path before the route is no base.
#[tokio::test]
async fn a_lambda_request_takes_its_base_from_api_gateway_not_from_host() {
    let (db, _data) = TestDb::with_generated(1).await;
    let state = function_state(Function::Kickoff, &db, Arc::new(shared::queue::NoQueue)).await;
    let mut e: serde_json::Value =
        serde_json::from_str(&event("kickoff-system.json")).expect("json");
    e["headers"]["host"] = "evil.example".into();
    e["headers"]["x-forwarded-host"] = "evil.example".into();
    let resp = answer(Function::Kickoff, &state, &e).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"].to_str().expect("loc");
    assert!(
        location.starts_with(
            "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/$exportstatus?_id="
        ),
        "{location}"
    );
    let mut prefixed = e.clone();
    prefixed["rawPath"] = "/anything/$export".into();
    prefixed["requestContext"]["http"]["path"] = "/anything/$export".into();
    let resp = answer(Function::Kickoff, &state, &prefixed).await;
    assert_eq!(resp.status(), 404);
}

/// The shipped API Gateway events work with authorization on, given a token:
/// `localstack/events/authorize.py` adds one signed with the functions' TOKEN_SIGNING_KEY for a
/// registered client (the README's `cargo lambda` recipe); without it the same event is a 401.
#[tokio::test]
async fn the_shipped_events_work_with_authorization_on_given_a_token() {
    let (db, _data) = TestDb::with_generated(2).await;
    let key = "events-test-signing-key-0123456789abcdef";
    let state = with_authorization(Function::Kickoff, &db, key).await;
    let unsigned: serde_json::Value =
        serde_json::from_str(&event("kickoff-system.json")).expect("json");
    let resp = answer(Function::Kickoff, &state, &unsigned).await;
    assert_eq!(resp.status(), 401, "no token, no export");

    let resp = answer(
        Function::Kickoff,
        &state,
        &authorized("kickoff-system.json", "dev-client", key),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"].to_str().expect("loc");
    let job_id = integration_tests::job_id_of(location);
    let job = shared::db::jobs::get_job(&db.pool, job_id)
        .await
        .expect("db")
        .expect("job");
    assert_eq!(job.client_id.as_deref(), Some("dev-client"));

    // A key other than the functions' is refused.
    let other = authorized(
        "kickoff-system.json",
        "dev-client",
        "another-signing-key-0123456789abcdef-xyz",
    );
    assert_eq!(
        answer(Function::Kickoff, &state, &other).await.status(),
        401
    );
}

/// The REST API front door (ApiType=RestApi): one proxy resource sends every route to the api
/// function, in API Gateway's v1 event format. The base carries the stage (`/fhir`), from the
/// request context; the function answers each route as its own function would, with
/// authorization on, and a path that is no route is a 404.
#[tokio::test]
async fn the_api_function_answers_every_route_of_a_rest_api_proxy_event() {
    let (db, _data) = TestDb::with_generated(2).await;
    let key = "rest-events-test-signing-key-0123456789abcdef";
    let state = with_authorization(Function::Api, &db, key).await;
    let unsigned: serde_json::Value =
        serde_json::from_str(&event("api-rest-kickoff-system.json")).expect("json");
    assert_eq!(
        answer(Function::Api, &state, &unsigned).await.status(),
        401,
        "no token, no export"
    );

    let kickoff = authorized("api-rest-kickoff-system.json", "dev-client", key);
    let resp = answer(Function::Api, &state, &kickoff).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let prefix = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/fhir/$exportstatus?_id=";
    assert!(location.starts_with(prefix), "{location}");
    let job_id = &location[prefix.len()..];

    // The same event on the status route, then a method the route does not have.
    let mut status = kickoff.clone();
    status["path"] = "/$exportstatus".into();
    status["requestContext"]["path"] = "/fhir/$exportstatus".into();
    status["pathParameters"]["proxy"] = "$exportstatus".into();
    status["queryStringParameters"] = serde_json::json!({ "_id": job_id });
    status["multiValueQueryStringParameters"] = serde_json::json!({ "_id": [job_id] });
    let resp = answer(Function::Api, &state, &status).await;
    assert_eq!(resp.status(), 202, "queued, no exporter has run");
    assert!(resp.headers().contains_key("x-progress"));
    status["httpMethod"] = "POST".into();
    let resp = answer(Function::Api, &state, &status).await;
    assert_eq!(resp.status(), 405);
    assert!(resp.headers()["allow"]
        .to_str()
        .expect("allow")
        .contains("DELETE"));

    // smart-configuration is the token function's route, at the base with its stage.
    let mut smart = kickoff.clone();
    smart["path"] = "/.well-known/smart-configuration".into();
    smart["pathParameters"]["proxy"] = ".well-known/smart-configuration".into();
    smart["queryStringParameters"] = serde_json::Value::Null;
    smart["multiValueQueryStringParameters"] = serde_json::Value::Null;
    let resp = answer(Function::Api, &state, &smart).await;
    assert_eq!(resp.status(), 200);
    let smart_config = json_of(resp);
    assert_eq!(
        smart_config["token_endpoint"],
        "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/fhir/auth/token"
    );

    // A path that is no route, and a route of another function: 404 OperationOutcomes.
    let mut nowhere = kickoff.clone();
    nowhere["path"] = "/Nothing/here".into();
    let resp = answer(Function::Api, &state, &nowhere).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let resp = answer(Function::Kickoff, &state, &smart).await;
    assert_eq!(
        resp.status(),
        404,
        "the kick-off function answers only its own routes"
    );
}
