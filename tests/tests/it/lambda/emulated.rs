//! The shipped bootstrap under AWS's Runtime Interface Emulator, one emulator per function
//! instance, with the environment template.yaml gives each function (integration_tests::
//! lambda_rig): real HTTP through an API Gateway stand-in, real SQS messages delivered as
//! Lambda's event source mapping delivers them, the schedule's and CloudFormation's events, and
//! Lambda's own failure modes (timeouts, kills, concurrency, init failures, payload limits).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use integration_tests::data::DataSet;
use integration_tests::lambda_rig::{ApiType, Emulator, Poller, Stack, StackOptions, StallRelay};
use integration_tests::{bearer_client, http_client, register_fixture_client, TestDb};
use serde_json::Value;

/// smart-fetch, unmodified, with the RS384 fixture key of client `smart-fetch`: resource counts
/// per type of the files it wrote.
async fn smart_fetch_counts(args: &[&str]) -> BTreeMap<String, usize> {
    let key = integration_tests::auth_fixture("rs384.jwks");
    let key = key.to_str().expect("utf-8 path");
    let auth = ["--smart-client-id", "smart-fetch", "--smart-key", key];
    crate::smart_fetch::run_with(args, &auth).await
}

/// An access token from the stack's token function for `client` (fixture RS384 key).
pub async fn token(base: &str, client: &str) -> String {
    crate::auth::access_token(base, client, "system/*.read").await
}

/// Polls `status_url` as a client should (honouring Retry-After) until it is not 202.
pub(super) async fn wait_done(
    client: &reqwest::Client,
    status_url: &str,
    stack: &Stack,
) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let resp = client.get(status_url).send().await.expect("status");
        if resp.status() != 202 && resp.status() != 429 {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "export did not finish\n{}",
            stack.logs()
        );
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
}

/// Every line of every output file of `manifest`, downloaded through `$exportfilerequest` and
/// the presigned URL it redirects to: (type, id) of each line, duplicates kept.
async fn download_all(client: &reqwest::Client, manifest: &Value) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for file in manifest["output"].as_array().expect("output") {
        let resp = client
            .get(file["url"].as_str().expect("url"))
            .header("Accept", "application/fhir+ndjson")
            .send()
            .await
            .expect("download");
        assert_eq!(resp.status(), 200, "{file}");
        let text = resp.text().await.expect("text");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("ndjson line");
            assert_eq!(v["resourceType"], file["type"]);
            keys.push((
                v["resourceType"].as_str().expect("type").to_string(),
                v["id"].as_str().expect("id").to_string(),
            ));
        }
        if let Some(count) = file["count"].as_u64() {
            assert_eq!(count as usize, text.lines().count(), "{file}");
        }
    }
    keys
}

/// The (type, id) keys a system export of `types` must contain, from the input files.
fn expected_keys(data: &integration_tests::data::DataSet, types: &[&str]) -> Vec<(String, String)> {
    let mut keys: Vec<_> = types.iter().flat_map(|t| data.keys_of(t)).collect();
    keys.sort();
    keys
}

/// A database from the template with `client` registered (scope `system/*.read`), and the stack
/// deployed over it behind `api_type`.
pub(super) async fn deployed(client: &str, api_type: ApiType) -> (TestDb, &'static DataSet, Stack) {
    let (db, data) = TestDb::from_template().await;
    register_fixture_client(&db.pool, client, "system/*.read").await;
    let stack = Stack::deploy(
        &db,
        StackOptions {
            api_type,
            ..Default::default()
        },
    )
    .await;
    (db, data, stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smart_fetch_exports_every_level_through_the_lambdas_behind_both_front_doors() {
    for api_type in [ApiType::HttpApi, ApiType::RestApi] {
        let (db, data, stack) = deployed("smart-fetch", api_type).await;
        let what = api_type.name();
        let base = stack.base_url.clone();
        let system = smart_fetch_counts(&["--fhir-url", &base]).await;
        crate::smart_fetch::assert_matches(
            &system,
            &data.count_by_type(),
            &format!("{what}: system"),
        );
        let patient = smart_fetch_counts(&["--fhir-url", &format!("{base}/Patient")]).await;
        let expected = data.expected_compartment_export(&data.patient_ids());
        crate::smart_fetch::assert_matches(&patient, &expected, &format!("{what}: Patient"));
        let group = smart_fetch_counts(&["--fhir-url", &base, "--group", &data.group_id]).await;
        let expected = data.expected_compartment_export(&data.group_members());
        crate::smart_fetch::assert_matches(&group, &expected, &format!("{what}: Group"));
        // smart-fetch deletes each export when it has its files: nothing is left running.
        let left: i64 = db
            .pool
            .get()
            .await
            .expect("conn")
            .query_one(
                "SELECT count(*) FROM export_jobs WHERE deleted_at IS NULL",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            left, 0,
            "{what}: smart-fetch's DELETEs went through the status function"
        );
        assert!(
            stack.dead_letters().await.is_empty(),
            "{what}: nothing dead-lettered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lambdas_answer_files_delete_over_polling_and_other_clients_as_serve_does() {
    let (db, data) = TestDb::from_template().await;
    register_fixture_client(&db.pool, "payer", "system/*.read").await;
    register_fixture_client(&db.pool, "other", "system/*.read").await;
    let stack = Stack::deploy(&db, StackOptions::default()).await;
    let base = &stack.base_url;
    let payer = bearer_client(&token(base, "payer").await);
    let other = bearer_client(&token(base, "other").await);

    // Without a token: 401 from the kick-off function, not from the front door.
    let denied = integration_tests::kickoff(&http_client(), &format!("{base}/$export")).await;
    assert_eq!(denied.status(), 401);
    assert!(denied.headers()["www-authenticate"]
        .to_str()
        .expect("header")
        .starts_with("Bearer"));
    // An unknown route is the front door's own 404, as API Gateway answers it.
    let unknown = http_client()
        .get(format!("{base}/Nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), 404);

    let kicked =
        integration_tests::kickoff(&payer, &format!("{base}/$export?_type=Patient,Condition"))
            .await;
    let status_url = integration_tests::status_url_of(kicked).await;
    assert!(
        status_url.starts_with(&format!("{base}/$exportstatus?_id=")),
        "{status_url}"
    );
    // Another client's export answers 404, as one that does not exist.
    let foreign = other.get(&status_url).send().await.expect("status");
    assert_eq!(foreign.status(), 404);
    let done = wait_done(&payer, &status_url, &stack).await;
    assert_eq!(done.status(), 200);
    let manifest: Value = done.json().await.expect("manifest");
    assert_eq!(manifest["requiresAccessToken"], true);
    // The file function redirects to a presigned S3 URL (s3s-fs checks its signature); the
    // file never goes through Lambda's response.
    let first = manifest["output"][0]["url"].as_str().expect("url");
    let redirect = integration_tests::http_client_no_redirect()
        .get(first)
        .bearer_auth(token(base, "payer").await)
        .send()
        .await
        .expect("file request");
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().expect("location");
    assert!(
        location.starts_with(&integration_tests::s3s().endpoint),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let tampered = location.replace("X-Amz-Expires=", "X-Amz-Expires=9");
    assert_eq!(
        http_client()
            .get(&tampered)
            .send()
            .await
            .expect("get")
            .status(),
        403
    );
    let mut got = download_all(&payer, &manifest).await;
    got.sort();
    assert_eq!(got, expected_keys(data, &["Condition", "Patient"]));

    // A second kick-off polled faster than the minimum interval gets 429 + Retry-After.
    let kicked =
        integration_tests::kickoff(&payer, &format!("{base}/$export?_type=Observation")).await;
    let second = integration_tests::status_url_of(kicked).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = payer.get(&second).send().await.expect("status");
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        codes.push(resp.status().as_u16());
    }
    assert!(codes.contains(&429), "over-polling: {codes:?}");
    // DELETE through the status function: 202, then the status URL is 404.
    let deleted = payer.delete(&second).send().await.expect("delete");
    assert_eq!(deleted.status(), 202);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        payer.get(&second).send().await.expect("status").status(),
        404
    );
}

/// Exports `types` and checks every (type, id) once and only once against the input files.
async fn export_exactly(
    stack: &Stack,
    data: &integration_tests::data::DataSet,
    types: &[&str],
) -> Value {
    let base = &stack.base_url;
    let client = bearer_client(&token(base, "payer").await);
    let kicked = integration_tests::kickoff(
        &client,
        &format!("{base}/$export?_type={}", types.join(",")),
    )
    .await;
    let status_url = integration_tests::status_url_of(kicked).await;
    let done = wait_done(&client, &status_url, stack).await;
    assert_eq!(done.status(), 200, "{}", stack.logs());
    assert_exact(stack, data, done, types).await
}

/// The manifest of a finished export; every (type, id) of `types` in its files once and only
/// once, against the input files.
async fn assert_exact(
    stack: &Stack,
    data: &integration_tests::data::DataSet,
    done: reqwest::Response,
    types: &[&str],
) -> Value {
    let manifest: Value = done.json().await.expect("manifest");
    // Downloads need a fresh token after a long export.
    let client = bearer_client(&token(&stack.base_url, "payer").await);
    let mut got = download_all(&client, &manifest).await;
    let total = got.len();
    got.sort();
    got.dedup();
    assert_eq!(total, got.len(), "no resource exported twice");
    assert_eq!(got, expected_keys(data, types), "every resource exported");
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_function_timeout_hands_off_and_the_export_completes_over_many_invocations() {
    // 2,500 generated patients (about 23 MB of resources), with or without ../shared.
    let (db, data) = TestDb::with_generated(2500).await;
    register_fixture_client(&db.pool, "payer", "system/*.read").await;
    // The functions reach the database at 5 MB/s: the export takes longer to read than one
    // invocation may run, on any machine, while each item (about 1 MiB) stays well inside the
    // margin the exporter keeps before its deadline.
    let admin = url::Url::parse(&integration_tests::admin_url()).expect("url");
    let postgres = format!(
        "{}:{}",
        admin.host_str().unwrap_or("127.0.0.1"),
        admin.port().unwrap_or(5432)
    );
    let relay = StallRelay::start(&postgres).await;
    relay.throttle(5_000_000);
    let through_relay = format!(
        "postgres://{}/{}",
        relay.endpoint.trim_start_matches("http://"),
        db.name
    );
    let stack = Stack::deploy(
        &db,
        StackOptions {
            // A function that may run 3 s: it takes no new work after 2.4 s and hands the rest
            // on through the queue; items of about 1 MiB (the template's minimum).
            parameters: vec![
                ("DatabaseUrl".into(), through_relay),
                ("ExportItemBytes".into(), "1048576".into()),
                ("ExporterLeaseSeconds".into(), "5".into()),
            ],
            exporter_timeout: Some(3),
            visibility_timeout: Some(6),
            ..Default::default()
        },
    )
    .await;
    let counts = data.count_by_type();
    let types: Vec<&str> = counts.keys().map(String::as_str).collect();
    export_exactly(&stack, &data, &types).await;
    // The invocations that wrote files, and how long each ran (REPORT's Duration, in ms).
    let mut working = Vec::new();
    for exporter in stack.all_exporters() {
        for invocation in exporter.log().split("START RequestId").skip(1) {
            if !invocation.contains("file written") {
                continue;
            }
            let ms: f64 = invocation
                .split("\tDuration: ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0.0);
            working.push(ms);
        }
    }
    assert!(
        working.len() >= 2,
        "the work spread over invocations: {working:?}"
    );
    // At least one ran up to its deadline (2.4 s of its 3 s) and stopped there by itself.
    assert!(
        working.iter().any(|ms| (2400.0..3000.0).contains(ms)),
        "no invocation stopped at its deadline: {working:?}\n{}",
        stack.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_concurrent_exporters_share_the_items_exactly() {
    let (db, data) = TestDb::from_template().await;
    register_fixture_client(&db.pool, "payer", "system/*.read").await;
    let stack = Stack::deploy(
        &db,
        StackOptions {
            parameters: vec![("ExportItemBytes".into(), "1048576".into())],
            exporters: 3,
            ..Default::default()
        },
    )
    .await;
    export_exactly(
        &stack,
        data,
        &["Observation", "Encounter", "Claim", "ExplanationOfBenefit"],
    )
    .await;
    let working: Vec<usize> = stack.exporters.iter().map(|e| e.invocations()).collect();
    assert!(
        working.iter().filter(|n| **n > 0).count() >= 2,
        "the work went to more than one instance: {working:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtime_killed_mid_item_by_its_timeout_loses_and_duplicates_nothing() {
    let (db, data) = TestDb::from_template().await;
    register_fixture_client(&db.pool, "payer", "system/*.read").await;
    let relay = StallRelay::start(&integration_tests::s3s().endpoint).await;
    let stack = Stack::deploy(
        &db,
        StackOptions {
            parameters: vec![("ExporterLeaseSeconds".into(), "5".into())],
            exporter_timeout: Some(8),
            visibility_timeout: Some(10),
            s3_endpoint: Some(relay.endpoint.clone()),
            // A lost wake-up (the killed invocation's message was handled while the item was
            // still leased) costs one sweep of the schedule, as in AWS.
            schedule_every: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    )
    .await;
    // Storage stops answering: the first invocation is stuck in an upload when Lambda's
    // timeout kills it, its lease unrenewed.
    relay.hang(true);
    let base = &stack.base_url;
    let client = bearer_client(&token(base, "payer").await);
    let kicked =
        integration_tests::kickoff(&client, &format!("{base}/$export?_type=Patient,Condition"))
            .await;
    let status_url = integration_tests::status_url_of(kicked).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.all_exporters().map(|e| e.timeouts()).sum::<usize>() == 0 {
        assert!(Instant::now() < deadline, "no timeout:\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    relay.hang(false);
    // The message comes back after the visibility timeout; the next invocation (a cold start)
    // takes the item once the lease has expired and finishes it.
    let done = wait_done(&client, &status_url, &stack).await;
    assert_eq!(done.status(), 200, "{}", stack.logs());
    assert_exact(&stack, data, done, &["Condition", "Patient"]).await;
    // The killed instance started cold again for its next invocation.
    let killed = stack
        .all_exporters()
        .find(|e| e.timeouts() > 0)
        .expect("killed");
    assert!(
        killed.init_durations_ms().len() >= 2,
        "a cold start after the kill:\n{}",
        killed.log()
    );
}

/// An emulator of `handler` as the stack deploys it, with `env` changed.
async fn broken(stack: &Stack, handler: &str, env: &[(&str, &str)]) -> Emulator {
    let mut spec = stack.specs[handler].clone();
    spec.name = format!("{}-broken", spec.name);
    for (k, v) in env {
        spec.env.insert(k.to_string(), v.to_string());
    }
    let s3s = integration_tests::s3s();
    let aws: BTreeMap<String, String> = [
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", s3s.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3s.secret_key.clone()),
        ("AWS_ENDPOINT_URL", integration_tests::aws_endpoint()),
        ("AWS_ENDPOINT_URL_S3", s3s.endpoint),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Emulator::start(spec, &aws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_start_that_cannot_work_fails_init_with_a_message_an_operator_can_act_on() {
    let db = TestDb::new().await;
    let stack = Stack::deploy(
        &db,
        StackOptions {
            poll_queue: false,
            ..Default::default()
        },
    )
    .await;
    let event = serde_json::json!({"version": "2.0", "rawPath": "/metadata", "rawQueryString": "",
        "headers": {}, "requestContext": {"http": {"method": "GET", "path": "/metadata"}}, "isBase64Encoded": false});
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-secret";
    let unmigrated = TestDb::empty().await;
    let admin = url::Url::parse(&integration_tests::admin_url()).expect("url");
    let unmigrated_url = format!(
        "postgres://{}:{}/{}?sslmode=disable",
        admin.host_str().unwrap_or("127.0.0.1"),
        admin.port().unwrap_or(5432),
        unmigrated.name
    );
    let nothing_there = format!(
        "postgres://127.0.0.1:{}/x?sslmode=disable",
        integration_tests::free_port()
    );
    // (function, its environment changed so, what the log must say)
    let cases = [
        (
            "kickoff",
            ("TOKEN_SIGNING_KEY_SECRET", missing),
            "TOKEN_SIGNING_KEY_SECRET",
        ),
        ("status", ("DATABASE_SECRET", missing), "DATABASE_SECRET"),
        (
            "kickoff",
            ("DATABASE_URL", unmigrated_url.as_str()),
            "schema is not up to date",
        ),
        ("file", ("DATABASE_URL", nothing_there.as_str()), "database"),
    ];
    for (handler, env, says) in cases {
        let emulator = broken(&stack, handler, &[env]).await;
        let invocation = emulator.invoke(&event).await;
        let log = emulator.log();
        assert!(
            invocation.is_error(),
            "{handler} {env:?}: {invocation:?}\n{log}"
        );
        assert!(
            log.contains(says),
            "{handler} {env:?}: the log says {says:?}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{handler}: no panic:\n{log}");
    }
    // The deploy's migrations: on a database that cannot be reached the migrate function
    // answers CloudFormation FAILED with the reason (the deploy rolls back), never hangs it.
    let migrate = broken(&stack, "migrate", &[("DATABASE_URL", &nothing_there)]).await;
    let failed = integration_tests::lambda_rig::custom_resource(&migrate, "Create").await;
    assert_eq!(failed["Status"], "FAILED", "{failed}");
    assert!(
        !failed["Reason"].as_str().unwrap_or("").is_empty(),
        "{failed}"
    );
    // Update applies nothing new; Delete keeps the schema.
    assert_eq!(stack.custom_resource("Update").await["Status"], "SUCCESS");
    assert_eq!(stack.custom_resource("Delete").await["Status"], "SUCCESS");
    assert!(shared::db::pending_migrations(&db.pool)
        .await
        .expect("pending")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_exporter_keeps_failing_comes_back_then_goes_to_the_dead_letter_queue() {
    let db = TestDb::new().await;
    let stack = Stack::deploy(
        &db,
        StackOptions {
            visibility_timeout: Some(1),
            poll_queue: false,
            schedule_every: None,
            ..Default::default()
        },
    )
    .await;
    // An exporter whose database is gone: every invocation fails, so no message is deleted.
    let nothing_there = format!(
        "postgres://127.0.0.1:{}/x?sslmode=disable",
        integration_tests::free_port()
    );
    let failing = Arc::new(broken(&stack, "exporter", &[("DATABASE_URL", &nothing_there)]).await);
    let body = format!("{{\"job_id\":\"{}\"}}", uuid::Uuid::new_v4());
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue_url)
        .message_body(&body)
        .send()
        .await
        .expect("send");
    let _poller = Poller::start(
        stack.sqs.clone(),
        stack.queue_url.clone(),
        stack.batch_size,
        failing.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let dead = stack.dead_letters().await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "not dead-lettered:\n{}",
            failing.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(dead, vec![body]);
    // Delivered maxReceiveCount times (the template's 5), each a failed invocation.
    assert_eq!(
        failing.invocations() as u64,
        stack.max_receive_count,
        "{}",
        failing.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_reach_the_functions_as_api_gateway_sends_them_within_lambdas_limits() {
    for api_type in [ApiType::HttpApi, ApiType::RestApi] {
        let (db, _) = TestDb::from_template().await;
        register_fixture_client(&db.pool, "payer", "system/*.read").await;
        let stack = Stack::deploy(
            &db,
            StackOptions {
                api_type,
                poll_queue: false,
                schedule_every: None,
                ..Default::default()
            },
        )
        .await;
        let what = api_type.name();
        let base = &stack.base_url;
        let client = bearer_client(&token(base, "payer").await);
        let post = |body: Vec<u8>, content_type: &str| {
            client
                .post(format!("{base}/$export"))
                .header("Accept", "application/fhir+json")
                .header("Prefer", "respond-async")
                .header("Content-Type", content_type)
                .body(body)
        };
        // A Parameters body as text: the kick-off reads it.
        let parameters = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient"}]});
        let accepted = post(parameters.to_string().into_bytes(), "application/fhir+json")
            .send()
            .await
            .expect("post");
        assert_eq!(accepted.status(), 202, "{what}");
        // Bytes that are not text arrive base64-encoded and decoded: the kick-off sees the
        // media type it does not take and says so (415), not a garbled body.
        let binary = post(vec![0xff, 0x00, 0x1f, 0x8b], "application/octet-stream")
            .send()
            .await
            .expect("post");
        assert_eq!(binary.status(), 415, "{what}");
        assert_eq!(binary.headers()["content-type"], "application/fhir+json");
        // Over Lambda's 6 MB request limit: API Gateway's 413, the function never invoked.
        let kickoffs = stack
            .functions
            .values()
            .map(|f| f.invocations())
            .sum::<usize>();
        let huge = post(vec![b' '; 7 * 1024 * 1024], "application/fhir+json")
            .send()
            .await
            .expect("post");
        assert_eq!(huge.status(), 413, "{what}");
        assert_eq!(
            stack
                .functions
                .values()
                .map(|f| f.invocations())
                .sum::<usize>(),
            kickoffs,
            "{what}: no function ran for it"
        );
    }
}
