//! The AWS SDK configuration every client here uses (S3, SQS, Secrets Manager): the standard
//! environment (region, credentials, `AWS_ENDPOINT_URL`) plus timeouts, so that an endpoint that
//! accepts connections and never answers costs a bounded wait, never a stalled export.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;

/// Timeouts of one AWS call: connecting, one attempt (an 8 MiB multipart part included), and
/// the whole operation with its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    pub connect: Duration,
    pub attempt: Duration,
    pub operation: Duration,
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        AwsTimeouts {
            connect: Duration::from_secs(5),
            attempt: Duration::from_secs(60),
            operation: Duration::from_secs(180),
        }
    }
}

impl AwsTimeouts {
    pub fn config(self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.attempt)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

/// The shared SDK configuration from the environment, with [`AwsTimeouts::default`].
pub async fn shared_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(AwsTimeouts::default().config())
        .load()
        .await
}
