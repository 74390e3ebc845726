//! The S3/SQS/Secrets Manager endpoints of the tests: moto, and s3s-fs (which checks signatures).

/// The S3/SQS emulator endpoint (moto), from TEST_AWS_ENDPOINT_URL.
pub fn aws_endpoint() -> String {
    std::env::var("TEST_AWS_ENDPOINT_URL").expect(
        "TEST_AWS_ENDPOINT_URL is not set: run the tests with scripts/test.sh, which starts an S3+SQS emulator",
    )
}

/// The SDK configuration for an emulator at `endpoint` with static keys.
async fn config_for(endpoint: &str, access_key: &str, secret_key: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            access_key, secret_key, None, None, "static",
        ))
        .load()
        .await
}

/// An S3 client with path-style addressing (what the emulators serve).
fn path_style_s3(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A bucket with a random name, created through `client`.
async fn create_bucket(client: aws_sdk_s3::Client) -> (aws_sdk_s3::Client, String) {
    let bucket = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    (client, bucket)
}

pub async fn aws_config() -> aws_config::SdkConfig {
    config_for(&aws_endpoint(), "test", "test").await
}

pub async fn s3_client() -> aws_sdk_s3::Client {
    path_style_s3(&aws_config().await)
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config().await)
}

/// A new bucket with a random name.
pub async fn new_bucket() -> (aws_sdk_s3::Client, String) {
    create_bucket(s3_client().await).await
}

/// A new SQS queue; returns its URL.
pub async fn new_queue() -> (aws_sdk_sqs::Client, String) {
    let client = sqs_client().await;
    let name = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
    let out = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("create queue");
    (client, out.queue_url().expect("queue url").to_string())
}

/// A new Secrets Manager secret (moto) holding `value`; returns its ARN.
pub async fn new_secret(client: &aws_sdk_secretsmanager::Client, value: &str) -> String {
    client
        .create_secret()
        .name(format!(
            "bulk-export-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .secret_string(value)
        .send()
        .await
        .expect("create secret")
        .arn()
        .expect("arn")
        .to_string()
}

/// The s3s-fs endpoint (an S3 server that checks SigV4 signatures, started by scripts/test.sh)
/// and the keys it was started with.
pub struct S3s {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn s3s() -> S3s {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests with scripts/test.sh, which installs and starts \
                 s3s-fs (an S3 server that checks signatures) for the presigned-URL tests"
            )
        })
    };
    S3s {
        endpoint: var("TEST_S3S_ENDPOINT_URL"),
        access_key: var("TEST_S3S_ACCESS_KEY"),
        secret_key: var("TEST_S3S_SECRET_KEY"),
    }
}

/// An S3 client for s3s-fs: its endpoint and keys, path-style addressing.
pub async fn s3s_client() -> aws_sdk_s3::Client {
    let s = s3s();
    path_style_s3(&config_for(&s.endpoint, &s.access_key, &s.secret_key).await)
}

/// A new bucket on s3s-fs (a directory under its root) with a random name.
pub async fn new_s3s_bucket() -> (aws_sdk_s3::Client, String) {
    create_bucket(s3s_client().await).await
}
