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
/// The functions of one test share one storage, as the functions of a stack do (a job records
/// the storage it is written to, and only an exporter writing there takes it).
async fn function_state(function: Function, db: &TestDb, queue: Arc<dyn JobQueue>) -> AppState {
    let dir = std::env::temp_dir().join(format!("bulkt-storage-{}", db.name));
    std::fs::create_dir_all(&dir).expect("storage dir");
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

fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

mod bulk_data_client;
mod emulated;
mod emulated_views;
mod exporter;
mod http;
