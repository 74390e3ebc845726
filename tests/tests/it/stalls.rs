//! An S3 or SQS endpoint that accepts connections and never answers costs a bounded wait: every
//! AWS client here is built with `shared::aws::AwsTimeouts` (connect, per attempt, per
//! operation). Before, a silent endpoint stalled a job for as long as it stayed silent.

use std::time::{Duration, Instant};

use shared::aws::AwsTimeouts;
use shared::queue::{JobQueue, SqsQueue};
use shared::storage::s3::S3Store;
use shared::storage::ObjectStore;

/// A TCP server that accepts every connection and never sends a byte.
async fn silent_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

async fn sdk_config(endpoint: &str, timeouts: AwsTimeouts) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .timeout_config(timeouts.config())
        .load()
        .await
}

const SHORT: AwsTimeouts = AwsTimeouts {
    connect: Duration::from_secs(1),
    attempt: Duration::from_secs(1),
    operation: Duration::from_secs(3),
};

#[tokio::test]
async fn a_silent_s3_or_sqs_endpoint_fails_within_the_timeouts() {
    let endpoint = silent_endpoint().await;
    let conf = sdk_config(&endpoint, SHORT).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let store = S3Store::new(s3, "bucket".into(), "exports".into());
    let started = Instant::now();
    assert!(store.read("job/Patient-0001.ndjson").await.is_err());
    let mut writer = store
        .writer("job/Patient-0001.ndjson")
        .await
        .expect("writer");
    writer.write(b"{}\n").await.expect("buffered");
    assert!(writer.finish().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&conf),
        format!("{endpoint}/000000000000/wake"),
    );
    let started = Instant::now();
    assert!(queue.send(uuid::Uuid::new_v4()).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_clients_built_from_the_environment_carry_the_timeouts() {
    let conf = shared::aws::shared_config().await;
    let t = conf.timeout_config().expect("timeouts configured");
    let default = AwsTimeouts::default();
    assert_eq!(t.connect_timeout(), Some(default.connect));
    assert_eq!(t.operation_attempt_timeout(), Some(default.attempt));
    assert_eq!(t.operation_timeout(), Some(default.operation));
}
