//! Contract of the queue port (`shared::queue::JobQueue`), per adapter: `SqsQueue` against the
//! SQS emulator that `scripts/test.sh` starts (`TEST_AWS_ENDPOINT_URL`), `LocalQueue` (the
//! in-process wake-up of `bulk-export serve`) and `NoQueue`.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::{aws_endpoint, new_queue, sqs_client};
use shared::queue::{JobQueue, LocalQueue, NoQueue, SqsQueue, WakeMessage};
use uuid::Uuid;

/// Generous bound for things that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn receive(client: &aws_sdk_sqs::Client, queue_url: &str, wait_seconds: i32) -> Vec<String> {
    client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_seconds)
        .send()
        .await
        .expect("receive_message")
        .messages()
        .iter()
        .map(|m| m.body().expect("message body").to_string())
        .collect()
}

#[tokio::test]
async fn sqs_queue_sends_one_wake_message_per_job() {
    let (client, queue_url) = new_queue().await;
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(sqs_client().await, queue_url.clone()));
    let job_id = Uuid::new_v4();

    queue.send(job_id).await.expect("send");

    let bodies = receive(&client, &queue_url, 2).await;
    assert_eq!(bodies.len(), 1, "one send, one message: {bodies:?}");
    let message: WakeMessage = serde_json::from_str(&bodies[0]).expect("body is a WakeMessage");
    assert_eq!(message, WakeMessage { job_id });
    // The received message is now invisible; anything else would be a second message.
    assert!(
        receive(&client, &queue_url, 1).await.is_empty(),
        "a second message was sent"
    );
}

#[tokio::test]
async fn sqs_queue_sends_a_message_for_each_job() {
    let (client, queue_url) = new_queue().await;
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(sqs_client().await, queue_url.clone()));
    let jobs = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    for job_id in jobs {
        queue.send(job_id).await.expect("send");
    }

    let mut received = Vec::new();
    while received.len() < jobs.len() {
        let bodies = receive(&client, &queue_url, 2).await;
        assert!(
            !bodies.is_empty(),
            "only {} of {} messages arrived",
            received.len(),
            jobs.len()
        );
        for body in bodies {
            let message: WakeMessage = serde_json::from_str(&body).expect("WakeMessage");
            received.push(message.job_id);
        }
    }
    received.sort();
    let mut expected = jobs.to_vec();
    expected.sort();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn sqs_queue_reports_a_missing_queue_as_an_error() {
    let queue_url = format!(
        "{}/123456789012/bulkt-missing-{}",
        aws_endpoint(),
        Uuid::new_v4().simple()
    );
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(sqs_client().await, queue_url.clone()));
    let job_id = Uuid::new_v4();

    let err = tokio::time::timeout(PROMPTLY * 6, queue.send(job_id))
        .await
        .expect("send to a missing queue returns instead of retrying forever")
        .expect_err("send to a missing queue fails");
    assert_eq!(err.job_id, job_id);
    assert_eq!(err.queue, queue_url);
    assert!(!err.message.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_queue_wakes_a_waiting_exporter() {
    let wake = LocalQueue::default();
    let queue: Arc<dyn JobQueue> = Arc::new(wake.clone());
    let notify = wake.notify.clone();
    let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
    let exporter = tokio::spawn(async move {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered as a waiter before the send happens.
        notified.as_mut().enable();
        waiting_tx.send(()).expect("test is listening");
        notified.await;
    });
    waiting_rx.await.expect("exporter is waiting");

    queue.send(Uuid::new_v4()).await.expect("send");

    tokio::time::timeout(PROMPTLY, exporter)
        .await
        .expect("the waiting exporter was woken")
        .expect("exporter task");
}

#[tokio::test]
async fn local_queue_keeps_a_wake_up_sent_before_anyone_waits() {
    let wake = LocalQueue::default();
    let queue: Arc<dyn JobQueue> = Arc::new(wake.clone());

    queue.send(Uuid::new_v4()).await.expect("send");

    tokio::time::timeout(PROMPTLY, wake.notify.notified())
        .await
        .expect("the wake-up sent before waiting was kept");
}

#[tokio::test]
async fn no_queue_accepts_every_wake_up() {
    let queue: Arc<dyn JobQueue> = Arc::new(NoQueue);
    for _ in 0..3 {
        queue.send(Uuid::new_v4()).await.expect("send");
    }
}

/// Fan-out: one wake-up per work item (sent ten to a call), so that up to the exporter
/// function's maximum concurrency of invocations share an export.
#[tokio::test]
async fn sqs_queue_sends_one_message_per_work_item() {
    let (client, queue_url) = new_queue().await;
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(sqs_client().await, queue_url.clone()));
    let job_id = Uuid::new_v4();

    queue.send_many(job_id, 23).await.expect("send_many");

    let mut received = Vec::new();
    loop {
        let bodies = receive(&client, &queue_url, 1).await;
        if bodies.is_empty() {
            break;
        }
        for body in bodies {
            let message: WakeMessage = serde_json::from_str(&body).expect("WakeMessage");
            received.push(message.job_id);
        }
    }
    assert_eq!(received, vec![job_id; 23]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_queue_wakes_one_waiting_worker_per_item() {
    let wake = LocalQueue::default();
    let queue: Arc<dyn JobQueue> = Arc::new(wake.clone());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(3);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let notify = wake.notify.clone();
            let ready = ready_tx.clone();
            tokio::spawn(async move {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                ready.send(()).await.expect("test is listening");
                notified.await;
            })
        })
        .collect();
    for _ in 0..3 {
        ready_rx.recv().await.expect("a worker is waiting");
    }

    queue.send_many(Uuid::new_v4(), 3).await.expect("send");

    for worker in workers {
        tokio::time::timeout(PROMPTLY, worker)
            .await
            .expect("every waiting worker was woken")
            .expect("worker task");
    }
}
