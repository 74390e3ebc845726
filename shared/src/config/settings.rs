//! Settings of the process around the export: the S3 client's and the logs'.

/// S3 client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Settings {
    /// `S3_GZIP_COPIES` (default true): a gzip copy beside each file, for clients that accept
    /// gzip; false: they get the plain file.
    pub gzip_copies: bool,
    /// `S3_FORCE_PATH_STYLE` (default: true when `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`
    /// points at an emulator, which rarely serves virtual-hosted buckets).
    pub force_path_style: bool,
    /// `S3_CONNECT_TIMEOUT_SECONDS` (default 5), `S3_FIRST_BYTE_TIMEOUT_SECONDS` (default 15) and
    /// `S3_MIN_UPLOAD_RATE_BYTES` (default 262144, 256 KiB/s): each request's attempt may take
    /// connect + first byte + its body at the minimum rate.
    pub timeouts: crate::aws::S3Timeouts,
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default in Lambda, for CloudWatch Logs Insights).
    Json,
    /// Human-readable (the default elsewhere).
    Text,
}

impl LogFormat {
    /// From `LOG_FORMAT` (`json` or `text`: anything else is text here, and an error in
    /// [`super::Config`]), defaulting to JSON in Lambda.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> LogFormat {
        match get("LOG_FORMAT").filter(|v| !v.trim().is_empty()) {
            Some(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None if get("AWS_LAMBDA_FUNCTION_NAME").is_some() => LogFormat::Json,
            None => LogFormat::Text,
        }
    }

    /// [`LogFormat::from_lookup`] over the environment: read before the rest of [`Config`], so
    /// that a configuration error is logged in the right format.
    pub fn from_env() -> LogFormat {
        LogFormat::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Where `serve` answers `GET /metrics` (`METRICS`, `METRICS_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsEndpoint {
    /// On the main listener, under the FHIR base's path (`[base]/metrics`): the default.
    Base,
    /// On a listener of its own at `/metrics` (`METRICS_ADDR=host:port`), not on the main one.
    Addr(std::net::SocketAddr),
    /// Nowhere (`METRICS=off`).
    Off,
}
