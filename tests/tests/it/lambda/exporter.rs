//! The exporter function: SQS messages, the schedule, partial batch failures.

use super::*;

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
    let job_id = integration_tests::job_id_of(&location);

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
    let job_id = integration_tests::job_id_of(&location);
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
