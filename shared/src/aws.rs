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

/// Timeouts of the S3 requests of an export, sized for each request (`S3_CONNECT_TIMEOUT_SECONDS`,
/// `S3_FIRST_BYTE_TIMEOUT_SECONDS`, `S3_MIN_UPLOAD_RATE_BYTES`): a request with a body of `n`
/// bytes may take connect + first byte + `n` / the minimum rate per attempt, so that a part upload
/// gets the time its size needs and a small request fails after seconds, not a minute, when S3
/// accepts connections and does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Timeouts {
    pub connect: Duration,
    /// From sending a request to the first byte of its answer (a small request's whole attempt).
    pub first_byte: Duration,
    /// Bytes a second an upload is allowed at least (not 0).
    pub min_upload_rate: u64,
}

/// Attempts of one S3 operation (the SDK's standard retry mode).
pub const S3_ATTEMPTS: u32 = 3;

impl Default for S3Timeouts {
    fn default() -> Self {
        S3Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(15),
            min_upload_rate: 256 * 1024,
        }
    }
}

impl S3Timeouts {
    /// One attempt of a request with a body of `body_bytes`.
    pub fn attempt(self, body_bytes: usize) -> Duration {
        let rate = self.min_upload_rate.max(1);
        let upload = Duration::from_millis((body_bytes as u64).saturating_mul(1000).div_ceil(rate));
        self.connect + self.first_byte + upload
    }

    /// One operation (its attempts and the waits between them) with a body of `body_bytes`.
    pub fn operation(self, body_bytes: usize) -> Duration {
        self.attempt(body_bytes) * S3_ATTEMPTS + Duration::from_secs(S3_ATTEMPTS as u64)
    }

    /// The SDK timeouts of a request with a body of `body_bytes`.
    pub fn config(self, body_bytes: usize) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.attempt(body_bytes))
            .operation_attempt_timeout(self.attempt(body_bytes))
            .operation_timeout(self.operation(body_bytes))
            .build()
    }
}
