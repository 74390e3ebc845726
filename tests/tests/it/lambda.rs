//! The Lambda entry points: API Gateway events through lambda_http into the handlers, and the
//! exporter driven by real SQS messages (moto) and by the scheduled event.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::{new_queue, temp_dir, TestDb};
use shared::app::AppState;
use shared::app::Function;
use shared::export::JobStatus;
use shared::queue::{JobQueue, SqsQueue};
use shared::storage::local::LocalStore;
use shared::storage::ObjectStore;

fn event(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../localstack/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("event file")
}

fn context(seconds_left: u64) -> lambda_runtime::Context {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let mut ctx = lambda_runtime::Context::default();
    ctx.deadline = now + seconds_left * 1000;
    ctx
}

/// `function`'s state as its cold start builds it (shared::app): only the clients it declares.
async fn function_state(function: Function, db: &TestDb, queue: Arc<dyn JobQueue>) -> AppState {
    let dir = temp_dir();
    let storage = dir.display().to_string();
    let config = integration_tests::config_with(db, &[("STORAGE_PATH", &storage), ("AUTH", "off")]);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
    shared::app::assemble(function, config, db.pool.clone(), store, queue)
}

/// A shipped event with a bearer token for `client`, signed with `key`: what
/// `localstack/events/authorize.py` prints (the README's `cargo lambda` recipe runs it so).
fn authorized(event_file: &str, client: &str, key: &str) -> serde_json::Value {
    let script = format!(
        "{}/../localstack/events/authorize.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("python3")
        .args([&script, event_file, client])
        .env("TOKEN_SIGNING_KEY", key)
        .output()
        .expect("python3 runs authorize.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("an event")
}

/// `function`'s answer to an API Gateway event (HTTP API v2 or REST API v1).
async fn answer(
    function: Function,
    state: &AppState,
    event: &serde_json::Value,
) -> shared::http::Response {
    let req = lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event");
    shared::http::router::handle_as(function, state, shared::lambda::from_lambda_request(req)).await
}

/// A response's JSON body.
fn json_of(resp: shared::http::Response) -> serde_json::Value {
    let shared::http::Body::Full(body) = resp.into_body() else {
        panic!("a JSON body")
    };
    serde_json::from_slice(&body).expect("json")
}

/// `function`'s state with authorization on, tokens signed with `key`, and `dev-client`
/// registered.
async fn with_authorization(function: Function, db: &TestDb, key: &str) -> AppState {
    integration_tests::register_fixture_client(&db.pool, "dev-client", "system/*.read").await;
    shared::app::assemble(
        function,
        integration_tests::config_with(db, &[("AUTH", "smart"), ("TOKEN_SIGNING_KEY", key)]),
        db.pool.clone(),
        Arc::new(LocalStore::new(temp_dir()).expect("store")),
        Arc::new(shared::queue::NoQueue),
    )
}

#[tokio::test]
async fn an_api_gateway_kickoff_event_queues_a_job_and_wakes_the_exporter_through_sqs() {
    let (db, data) = TestDb::with_generated(6).await;
    let (sqs, queue_url) = new_queue().await;
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(sqs.clone(), queue_url.clone()));
    let state = function_state(Function::Kickoff, &db, queue.clone()).await;

    // The API Gateway (HTTP API v2) event shipped for `sam local invoke` / `cargo lambda invoke`.
    let resp = answer(
        Function::Kickoff,
        &state,
        &serde_json::from_str::<serde_json::Value>(&event("kickoff-system.json")).expect("json"),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    assert!(
        location.starts_with("https://") && location.contains("/$exportstatus?_id="),
        "{location}"
    );
    let job_id: uuid::Uuid = location
        .rsplit('=')
        .next()
        .expect("id")
        .parse()
        .expect("uuid");

    // The kick-off sent exactly one wake-up naming the job.
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive");
    let messages = received.messages();
    assert_eq!(messages.len(), 1);
    let body = messages[0].body().expect("body");
    let wake: shared::queue::WakeMessage = serde_json::from_str(body).expect("wake message");
    assert_eq!(wake.job_id, job_id);

    // Deliver it to the exporter Lambda as an SQS event.
    let payload = serde_json::json!({"Records": [{
        "messageId": messages[0].message_id().expect("id"),
        "receiptHandle": messages[0].receipt_handle().expect("handle"),
        "body": body,
        "attributes": {}, "messageAttributes": {},
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
        "awsRegion": "us-east-1"
    }]});
    let exporter = function_state(Function::Exporter, &db, queue)
        .await
        .exporter();
    let out = shared::lambda::handle_exporter_event(
        &exporter,
        lambda_runtime::LambdaEvent::new(payload, context(900)),
    )
    .await
    .expect("handler");
    assert_eq!(out["batchItemFailures"], serde_json::json!([]));
    let job = shared::db::jobs::get_job(&db.pool, job_id)
        .await
        .expect("db")
        .expect("job");
    assert_eq!(job.status, JobStatus::Complete);
    let files = shared::db::files::select_files(&db.pool, job_id)
        .await
        .expect("files");
    let patients: i64 = files
        .iter()
        .filter(|f| f.resource_type == "Patient")
        .map(|f| f.resource_count)
        .sum();
    let observations: i64 = files
        .iter()
        .filter(|f| f.resource_type == "Observation")
        .map(|f| f.resource_count)
        .sum();
    assert_eq!(
        patients as usize,
        data.patient_ids().len(),
        "kickoff-system.json asks for Patient,Observation"
    );
    assert_eq!(observations as usize, data.count_by_type()["Observation"]);
    assert_eq!(files.len(), 2);
}

#[tokio::test]
async fn the_scheduled_event_finds_jobs_whose_wake_up_was_lost() {
    let (db, _data) = TestDb::with_generated(3).await;
    let kickoff = function_state(Function::Kickoff, &db, Arc::new(shared::queue::NoQueue)).await;
    let resp = answer(
        Function::Kickoff,
        &kickoff,
        &serde_json::from_str::<serde_json::Value>(&event("kickoff-patient.json")).expect("json"),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let payload: serde_json::Value =
        serde_json::from_str(&event("exporter-schedule.json")).expect("json");
    let exporter = function_state(Function::Exporter, &db, Arc::new(shared::queue::NoQueue)).await;
    let out = shared::lambda::handle_exporter_event(
        &exporter.exporter(),
        lambda_runtime::LambdaEvent::new(payload, context(900)),
    )
    .await
    .expect("handler");
    assert_eq!(out["completed"], 1);
}

#[tokio::test]
async fn a_failed_run_reports_its_message_as_a_batch_item_failure() {
    let (db, _data) = TestDb::with_generated(1).await;
    let mut state = function_state(Function::Exporter, &db, Arc::new(shared::queue::NoQueue)).await;
    // A database that refuses connections.
    state.pool = shared::db::pool("postgres://postgres@127.0.0.1:1/none", 1).expect("pool");
    let payload: serde_json::Value =
        serde_json::from_str(&event("exporter-sqs.json")).expect("json");
    let message_id = payload["Records"][0]["messageId"]
        .as_str()
        .expect("id")
        .to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        shared::lambda::handle_exporter_event(
            &state.exporter(),
            lambda_runtime::LambdaEvent::new(payload, context(900)),
        ),
    )
    .await
    .expect("in time")
    .expect("handler answers");
    assert_eq!(
        out["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": message_id}])
    );
}

#[tokio::test]
async fn a_kickoff_whose_wake_up_cannot_be_sent_still_queues_the_job() {
    let (db, _data) = TestDb::with_generated(2).await;
    let sqs = integration_tests::sqs_client().await;
    let missing = format!(
        "{}/123456789012/no-such-queue",
        integration_tests::aws_endpoint()
    );
    let state = function_state(
        Function::Kickoff,
        &db,
        Arc::new(SqsQueue::new(sqs, missing)),
    )
    .await;
    let resp = answer(
        Function::Kickoff,
        &state,
        &serde_json::from_str::<serde_json::Value>(&event("kickoff-system.json")).expect("json"),
    )
    .await;
    assert_eq!(
        resp.status(),
        202,
        "the job is stored before the wake-up is sent"
    );
    let location = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let job_id: uuid::Uuid = location
        .rsplit('=')
        .next()
        .expect("id")
        .parse()
        .expect("uuid");
    let job = shared::db::jobs::get_job(&db.pool, job_id)
        .await
        .expect("db")
        .expect("job");
    assert_eq!(job.status, JobStatus::Queued);
    // The next scheduled run picks it up.
    let payload: serde_json::Value =
        serde_json::from_str(&event("exporter-schedule.json")).expect("json");
    let exporter = function_state(Function::Exporter, &db, Arc::new(shared::queue::NoQueue)).await;
    shared::lambda::handle_exporter_event(
        &exporter.exporter(),
        lambda_runtime::LambdaEvent::new(payload, context(900)),
    )
    .await
    .expect("handler");
    let job = shared::db::jobs::get_job(&db.pool, job_id)
        .await
        .expect("db")
        .expect("job");
    assert_eq!(job.status, JobStatus::Complete);
}

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

fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
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
    let job_id: uuid::Uuid = location
        .rsplit('=')
        .next()
        .expect("id")
        .parse()
        .expect("uuid");
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
