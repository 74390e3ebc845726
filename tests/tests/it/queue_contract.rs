//! Contract of the queue port (`shared::queue::JobQueue`): one suite run against `SqsQueue` on
//! the SQS emulator that `scripts/test.sh` starts (`TEST_AWS_ENDPOINT_URL`) and `LocalQueue`
//! (the in-process wake-up of `bulk-export serve`), then what only SQS does (the message body,
//! an unreachable queue).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::{aws_endpoint, new_queue, sqs_client};
use shared::queue::{JobQueue, LocalQueue, SqsQueue, WakeMessage};
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

/// A queue under test and the consumer end of it.
struct Subject {
    queue: Arc<dyn JobQueue>,
    consumer: Consumer,
}

enum Consumer {
    /// Exporter invocations receive messages.
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
    },
    /// `serve`'s exporters wait on the notification.
    Local(LocalQueue),
}

async fn sqs_queue() -> Subject {
    let (client, url) = new_queue().await;
    Subject {
        queue: Arc::new(SqsQueue::new(sqs_client().await, url.clone())),
        consumer: Consumer::Sqs { client, url },
    }
}

async fn local_queue() -> Subject {
    let wake = LocalQueue::default();
    Subject {
        queue: Arc::new(wake.clone()),
        consumer: Consumer::Local(wake),
    }
}

impl Subject {
    /// `n` consumers, already waiting; the handle ends when each has been woken once, with the
    /// job of its wake-up where the queue carries one (SQS), and fails if that takes long.
    async fn waiting_consumers(&self, n: usize) -> tokio::task::JoinHandle<Vec<Option<Uuid>>> {
        match &self.consumer {
            Consumer::Sqs { client, url } => {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut jobs = Vec::new();
                    let deadline = tokio::time::Instant::now() + PROMPTLY;
                    while jobs.len() < n {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "{} of {n} woken",
                            jobs.len()
                        );
                        for body in receive(&client, &url, 1).await {
                            let m: WakeMessage = serde_json::from_str(&body).expect("WakeMessage");
                            jobs.push(Some(m.job_id));
                        }
                    }
                    // Exactly n: nothing more arrives.
                    assert!(
                        receive(&client, &url, 1).await.is_empty(),
                        "more than {n} wake-ups"
                    );
                    jobs
                })
            }
            Consumer::Local(wake) => {
                let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n);
                let workers: Vec<_> = (0..n)
                    .map(|_| {
                        let notify = wake.notify.clone();
                        let ready = ready_tx.clone();
                        tokio::spawn(async move {
                            let notified = notify.notified();
                            tokio::pin!(notified);
                            // Registered as a waiter before the send happens.
                            notified.as_mut().enable();
                            ready.send(()).await.expect("test is listening");
                            notified.await;
                        })
                    })
                    .collect();
                for _ in 0..n {
                    ready_rx.recv().await.expect("a consumer is waiting");
                }
                tokio::spawn(async move {
                    let mut woken = Vec::new();
                    for worker in workers {
                        tokio::time::timeout(PROMPTLY, worker)
                            .await
                            .expect("every waiting consumer is woken")
                            .expect("consumer task");
                        woken.push(None);
                    }
                    woken
                })
            }
        }
    }
}

/// A wake-up sent while nobody waits is kept for the next consumer (an exporter busy with
/// another job, or an SQS message waiting for an invocation).
async fn keeps_a_wake_up_sent_before_anyone_waits(s: &Subject) {
    let job = Uuid::new_v4();
    s.queue.send(job).await.expect("send");
    let woken = s.waiting_consumers(1).await.await.expect("consumer");
    assert_eq!(woken.len(), 1);
    assert!(woken[0].is_none_or(|j| j == job), "{woken:?}");
}

/// Fan-out: one wake-up per work item, each to one consumer, so that as many exporters as the
/// queue allows share an export.
async fn wakes_one_consumer_per_work_item(s: &Subject) {
    let job = Uuid::new_v4();
    let consumers = s.waiting_consumers(3).await;
    s.queue.send_many(job, 3).await.expect("send_many");
    let woken = consumers.await.expect("consumers");
    assert_eq!(woken.len(), 3);
    assert!(
        woken.iter().all(|j| j.is_none_or(|j| j == job)),
        "{woken:?}"
    );
}

macro_rules! contract {
    ($($subject:ident),+) => {
        $(
            mod $subject {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn keeps_a_wake_up_sent_before_anyone_waits() {
                    super::keeps_a_wake_up_sent_before_anyone_waits(&super::$subject().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn wakes_one_consumer_per_work_item() {
                    super::wakes_one_consumer_per_work_item(&super::$subject().await).await;
                }
            }
        )+
    };
}

contract!(sqs_queue, local_queue);

// ---- SQS only -------------------------------------------------------------------------------

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
