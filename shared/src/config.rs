//! Configuration from the environment, parsed and validated once at cold start.
//!
//! Firely Server's setting names map to variables: StoragePath → `STORAGE_PATH`,
//! RepeatPeriod → `REPEAT_PERIOD` (milliseconds), AdditionalResources → `ADDITIONAL_RESOURCES`.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// The longest lifetime of a presigned download URL.
pub const MAX_PRESIGN_TTL_SECONDS: u64 = 3600;

/// Where export files go: `s3://bucket/prefix` or a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoragePath {
    S3 { bucket: String, prefix: String },
    Local(PathBuf),
}

/// A `STORAGE_PATH` that names no place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidStoragePath(pub String);

impl StoragePath {
    pub fn parse(value: &str) -> Result<Self, InvalidStoragePath> {
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(InvalidStoragePath("s3:// path needs a bucket name".into()));
            }
            Ok(StoragePath::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else if value.is_empty() {
            Err(InvalidStoragePath("empty path".into()))
        } else {
            Ok(StoragePath::Local(PathBuf::from(
                value.strip_prefix("file://").unwrap_or(value),
            )))
        }
    }

    /// A stable name of this storage, recorded with each job at kick-off: an exporter whose
    /// storage has another name leaves the job alone (its files would be written where the
    /// process serving them cannot find them). `s3://bucket/prefix`, or the directory's
    /// absolute path with symbolic links resolved when it exists.
    pub fn identity(&self) -> String {
        match self {
            StoragePath::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            StoragePath::Local(dir) => {
                let absolute = std::fs::canonicalize(dir)
                    .or_else(|_| std::path::absolute(dir))
                    .unwrap_or_else(|_| dir.clone());
                format!("file://{}", absolute.display())
            }
        }
    }
}

/// `url` with the password of its user info replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_secret", &self.database_secret)
            .field("storage_path", &self.storage_path)
            .field("queue_url", &self.queue_url)
            .field("repeat_period", &self.repeat_period)
            .field("additional_resources", &self.additional_resources)
            .field("public_base_url", &self.public_base_url)
            .field("trust_forwarded_headers", &self.trust_forwarded_headers)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("item_bytes", &self.item_bytes)
            .field("scan_patient_share", &self.scan_patient_share)
            .field("scan_max_patients", &self.scan_max_patients)
            .field("presign_ttl", &self.presign_ttl)
            .field("job_retention", &self.job_retention)
            .field("cancelled_status", &self.cancelled_status)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("storage_outage", &self.storage_outage)
            .field("retry_after_seconds", &self.retry_after_seconds)
            .field("min_poll_interval", &self.min_poll_interval)
            .field("max_concurrent_exports", &self.max_concurrent_exports)
            .field("max_stored_exports", &self.max_stored_exports)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("body_budget_bytes", &self.body_budget_bytes)
            .field("metrics", &self.metrics)
            .field("database_pool_size", &self.database_pool_size)
            .field("s3", &self.s3)
            .field("log_format", &self.log_format)
            .field("auth", &self.auth)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("token_signing_key_secret", &self.token_signing_key_secret)
            .finish()
    }
}

/// Authorization of the kick-off, status and file routes.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// None at all: for one machine only (`serve --insecure`, `AUTH=off`).
    Off,
    /// SMART Backend Services bearer tokens, signed with `signing_key` (`TOKEN_SIGNING_KEY`;
    /// `serve` makes a random one when it is not set, the Lambdas refuse to start).
    Smart { signing_key: Option<Vec<u8>> },
}

impl std::fmt::Debug for AuthMode {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Off => write!(f, "Off"),
            AuthMode::Smart { signing_key } => write!(
                f,
                "Smart {{ signing_key: {} }}",
                if signing_key.is_some() {
                    "<set>"
                } else {
                    "<none>"
                }
            ),
        }
    }
}

impl AuthMode {
    pub fn is_on(&self) -> bool {
        matches!(self, AuthMode::Smart { .. })
    }
}

/// What the status URL of a cancelled (or deleted) job answers: the HTTP layer gives it its
/// status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelledStatus {
    /// As if the job were unknown: 404, the IG's (`CANCELLED_STATUS_CODE=404`, the default).
    NotFound,
    /// Gone: 410, Firely Server's (`CANCELLED_STATUS_CODE=410`).
    Gone,
}

/// Shortest accepted TOKEN_SIGNING_KEY (HS256 wants at least 256 bits).
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

/// Every setting, parsed once. Its `Debug` never prints the database password (nor the signing
/// key, see [`AuthMode`]), so a `{config:?}` in a log is safe.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    /// `DATABASE_SECRET`: a Secrets Manager secret (ARN or name) with the database user name and
    /// password, put into `database_url` at cold start (crate::db::credentials).
    pub database_secret: Option<String>,
    pub storage_path: StoragePath,
    /// SQS queue that wakes the exporter. None: no queue (serve wakes its exporter in-process).
    pub queue_url: Option<String>,
    /// How often the exporter looks for work without being woken (Firely RepeatPeriod).
    pub repeat_period: Duration,
    /// Types of referenced resources added to Patient and Group exports (Firely AdditionalResources).
    pub additional_resources: Vec<String>,
    /// The FHIR base URL of this deployment (`PUBLIC_BASE_URL`; `serve` defaults it from its
    /// bind address). None: from API Gateway's request context in Lambda (crate::http::canonical_base).
    pub public_base_url: Option<String>,
    /// `TRUST_FORWARDED_HEADERS=true`: take the base from X-Forwarded-Proto/-Host when no
    /// PUBLIC_BASE_URL is set (only behind a proxy that sets them and strips clients' own).
    pub trust_forwarded_headers: bool,
    /// An ndjson file is closed and a new one started once it reaches this size.
    pub max_file_bytes: u64,
    /// Target size of a work item (`EXPORT_ITEM_BYTES`): planning splits larger types into key
    /// ranges of about this many bytes, each claimed by any exporter. Ids are not in table
    /// order, so each range of a type visits most of the type's pages: larger items visit fewer
    /// pages more than once (docs/BENCHMARKS.md, "What moved the numbers").
    pub item_bytes: u64,
    /// `EXPORT_SCAN_PERCENT` (default 25): a Patient- or Group-level job with at least this
    /// share of all Patients reads its compartment types by scanning them and testing each
    /// resource's patients (as fast as a system-level read); a smaller one reads its patients'
    /// resources through the compartment index (cost independent of the database's size).
    /// Above 100: never scan. Both give the same files.
    pub scan_patient_share: f64,
    /// `EXPORT_SCAN_MAX_PATIENTS` (default 2,000,000): a job with more patients never scans.
    /// A scan tests each row against an in-memory hash of the job's patients, which Postgres
    /// cannot spill to disk (about 128 bytes per patient, in each reading statement: 256 MB at
    /// the default); a larger job joins the compartment, whose hash joins spill when they must.
    pub scan_max_patients: i64,
    pub presign_ttl: Duration,
    pub job_retention: Duration,
    /// What the status URL of a cancelled job answers (`CANCELLED_STATUS_CODE`).
    pub cancelled_status: CancelledStatus,
    /// How long an exporter owns a job before another may reclaim it.
    pub lease: Duration,
    /// Crashed or failed attempts before a job is Failed.
    pub max_attempts: i32,
    /// How long an item waits out its storage being unavailable (timeouts, unreachable, 5xx)
    /// before its job is Failed; such failures are not attempts.
    pub storage_outage: Duration,
    /// Seconds a client is told to wait between status polls.
    pub retry_after_seconds: u64,
    /// Status polls of a running job closer together than this get 429 (0: no limit).
    pub min_poll_interval: Duration,
    /// Running exports one client may have at once; one more gets 429.
    pub max_concurrent_exports: i64,
    /// Exports per client whose status and files are kept (any state, until deleted or
    /// expired): one more kick-off gets 429.
    pub max_stored_exports: i64,
    /// `serve`: a connection's request headers must arrive within this (slow clients).
    pub header_read_timeout: Duration,
    /// `serve`: a request body must arrive within this.
    pub body_read_timeout: Duration,
    /// `serve`: open connections at most; more are closed at once.
    pub max_connections: usize,
    /// `serve`: open connections from one peer at most (an IPv4 address or an IPv6 /64; at
    /// most `max_connections`); more from it are closed at once (crate::serve::Connections).
    pub max_connections_per_peer: usize,
    /// `serve`: bytes of request bodies in memory at once (`SERVE_BODY_BUDGET_BYTES`, at least
    /// one largest body); a body that does not fit gets 503 (crate::serve).
    pub body_budget_bytes: usize,
    /// `serve`: where `GET /metrics` is answered (`METRICS`, `METRICS_ADDR`).
    pub metrics: MetricsEndpoint,
    /// `DATABASE_POOL_SIZE`: database connections per process (unset: 4 in a Lambda function,
    /// 8 + 3 per exporter worker in `serve`, 8 for the other commands).
    pub database_pool_size: Option<usize>,
    /// How the S3 client talks to its endpoint.
    pub s3: S3Settings,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    pub auth: AuthMode,
    /// Lifetime of issued access tokens (at most 300 s).
    pub access_token_ttl: Duration,
    /// Secrets Manager secret (ARN or name) holding the signing key, read at cold start when
    /// TOKEN_SIGNING_KEY is not set.
    pub token_signing_key_secret: Option<String>,
}

mod settings;
pub mod table;
pub use settings::{LogFormat, MetricsEndpoint, S3Settings};
use table::Values;

/// `ADDITIONAL_RESOURCES`' default (the table's, unit-tested).
pub const DEFAULT_ADDITIONAL_RESOURCES: &[&str] = &[
    "Organization",
    "Location",
    "Substance",
    "Device",
    "BodyStructure",
    "Medication",
    "Coverage",
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Every setting of [`table::SETTINGS`] read from `get` and checked there; here they become
    /// the fields, with the checks that involve two settings.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Values::read(&get)?;
        let text = |name| v.text(name).unwrap_or_default();
        let max_connections: usize = v.count("SERVE_MAX_CONNECTIONS")?;
        Ok(Config {
            database_url: text("DATABASE_URL"),
            database_secret: v.text("DATABASE_SECRET"),
            storage_path: v.storage("STORAGE_PATH"),
            queue_url: v.text("QUEUE_URL"),
            repeat_period: Duration::from_millis(v.count("REPEAT_PERIOD")?),
            additional_resources: v.types("ADDITIONAL_RESOURCES"),
            public_base_url: v.text("PUBLIC_BASE_URL"),
            trust_forwarded_headers: v.flag("TRUST_FORWARDED_HEADERS") == Some(true),
            max_file_bytes: v.count("MAX_FILE_BYTES")?,
            item_bytes: v.count("EXPORT_ITEM_BYTES")?,
            scan_patient_share: v.count::<u64>("EXPORT_SCAN_PERCENT")? as f64 / 100.0,
            scan_max_patients: v.count("EXPORT_SCAN_MAX_PATIENTS")?,
            presign_ttl: Duration::from_secs(v.count("PRESIGN_TTL_SECONDS")?),
            job_retention: hours(&v, "JOB_RETENTION_HOURS")?,
            cancelled_status: match text("CANCELLED_STATUS_CODE").as_str() {
                "410" => CancelledStatus::Gone,
                _ => CancelledStatus::NotFound,
            },
            lease: Duration::from_secs(v.count("LEASE_SECONDS")?),
            max_attempts: v.count("MAX_ATTEMPTS")?,
            storage_outage: Duration::from_secs(v.count("STORAGE_OUTAGE_SECONDS")?),
            retry_after_seconds: v.count("RETRY_AFTER_SECONDS")?,
            min_poll_interval: Duration::from_millis(v.count("MIN_POLL_INTERVAL_MS")?),
            max_concurrent_exports: v.count("MAX_CONCURRENT_EXPORTS")?,
            max_stored_exports: v.count("MAX_STORED_EXPORTS")?,
            header_read_timeout: Duration::from_secs(v.count("SERVE_HEADER_TIMEOUT_SECONDS")?),
            body_read_timeout: Duration::from_secs(v.count("SERVE_BODY_TIMEOUT_SECONDS")?),
            max_connections,
            max_connections_per_peer: per_peer(&get, &v, max_connections)?,
            body_budget_bytes: v.count("SERVE_BODY_BUDGET_BYTES")?,
            metrics: metrics(&v)?,
            database_pool_size: v.number("DATABASE_POOL_SIZE")?,
            s3: S3Settings {
                gzip_copies: v.flag("S3_GZIP_COPIES") != Some(false),
                force_path_style: v.flag("S3_FORCE_PATH_STYLE").unwrap_or_else(|| {
                    v.is_set("AWS_ENDPOINT_URL") || v.is_set("AWS_ENDPOINT_URL_S3")
                }),
                timeouts: crate::aws::S3Timeouts {
                    connect: Duration::from_secs(v.count("S3_CONNECT_TIMEOUT_SECONDS")?),
                    first_byte: Duration::from_secs(v.count("S3_FIRST_BYTE_TIMEOUT_SECONDS")?),
                    min_upload_rate: v.count("S3_MIN_UPLOAD_RATE_BYTES")?,
                },
            },
            log_format: LogFormat::from_lookup(&get),
            auth: match text("AUTH").as_str() {
                "off" => AuthMode::Off,
                _ => AuthMode::Smart {
                    signing_key: v.text("TOKEN_SIGNING_KEY").map(String::into_bytes),
                },
            },
            access_token_ttl: Duration::from_secs(v.count("ACCESS_TOKEN_TTL_SECONDS")?),
            token_signing_key_secret: v.text("TOKEN_SIGNING_KEY_SECRET"),
        })
    }
}

/// Hours as a duration (too many for one: an error).
fn hours(v: &Values, name: &'static str) -> Result<Duration, ConfigError> {
    let hours: u64 = v.count(name)?;
    hours
        .checked_mul(3600)
        .map(Duration::from_secs)
        .ok_or_else(|| ConfigError::Invalid {
            name,
            value: hours.to_string(),
            reason: "too large".into(),
        })
}

/// `SERVE_MAX_CONNECTIONS_PER_PEER`: at most `SERVE_MAX_CONNECTIONS` (set above it: an error;
/// unset, its default is lowered to it).
fn per_peer(
    get: &impl Fn(&str) -> Option<String>,
    v: &Values,
    max_connections: usize,
) -> Result<usize, ConfigError> {
    const NAME: &str = "SERVE_MAX_CONNECTIONS_PER_PEER";
    let per_peer: usize = v.count(NAME)?;
    let set = get(NAME).is_some_and(|v| !v.trim().is_empty());
    if set && per_peer > max_connections {
        return Err(ConfigError::Invalid {
            name: NAME,
            value: per_peer.to_string(),
            reason: format!("must be at most SERVE_MAX_CONNECTIONS ({max_connections})"),
        });
    }
    Ok(per_peer.min(max_connections))
}

/// `METRICS` and `METRICS_ADDR`.
fn metrics(v: &Values) -> Result<MetricsEndpoint, ConfigError> {
    match (v.flag("METRICS"), v.addr("METRICS_ADDR")) {
        (Some(false), Some(addr)) => Err(ConfigError::Invalid {
            name: "METRICS_ADDR",
            value: addr.to_string(),
            reason: "METRICS=off serves no metrics: unset one of them".into(),
        }),
        (Some(false), None) => Ok(MetricsEndpoint::Off),
        (_, Some(addr)) => Ok(MetricsEndpoint::Addr(addr)),
        (_, None) => Ok(MetricsEndpoint::Base),
    }
}

/// `PUBLIC_BASE_URL`: an absolute http(s) URL without query or fragment; trailing `/` removed.
fn check_base_url(u: &str) -> Result<String, String> {
    let u = u.trim().trim_end_matches('/');
    let invalid = |reason: &str| reason.to_string();
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| invalid("must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(invalid(
            "must be scheme://host[:port][/path], without query or fragment",
        ));
    }
    Ok(u.to_string())
}

#[cfg(test)]
mod tests;
