//! The environment variables each command's --help names.

pub const DATABASE: &str = "Environment:
  DATABASE_URL  Postgres URL (required), e.g. postgres://user:pass@127.0.0.1:5432/fhir_bulk;
                TLS: ?sslmode=require|verify-ca|verify-full&sslrootcert=/path/ca.pem
  DATABASE_SECRET  or: a Secrets Manager secret ({\"username\", \"password\"}) whose
                credentials go into DATABASE_URL (then without a password), as in AWS
  RUST_LOG, LOG_FORMAT=json, NO_COLOR  logging";

const SERVE: &str = "Environment (README.md, Configuration, has the defaults):
  DATABASE_URL            Postgres URL (required)
  STORAGE_PATH            ./exports (default), another directory, or s3://bucket/prefix
  PORT, HOST              what --port and --host default to
  PUBLIC_BASE_URL         the FHIR base URL clients use
  AUTH                    smart (default) or off (same as --insecure)
  TOKEN_SIGNING_KEY, TOKEN_SIGNING_KEY_SECRET, ACCESS_TOKEN_TTL_SECONDS
  EXPORT_WORKERS          what --workers defaults to (default: the number of cores)
  REPEAT_PERIOD, ADDITIONAL_RESOURCES, MAX_FILE_BYTES, EXPORT_ITEM_BYTES, EXPORT_SCAN_PERCENT,
  EXPORT_SCAN_MAX_PATIENTS, PRESIGN_TTL_SECONDS,
  JOB_RETENTION_HOURS, CANCELLED_STATUS_CODE, LEASE_SECONDS, MAX_ATTEMPTS, STORAGE_OUTAGE_SECONDS,
  RETRY_AFTER_SECONDS, MIN_POLL_INTERVAL_MS, MAX_CONCURRENT_EXPORTS, S3_GZIP_COPIES,
  S3_CONNECT_TIMEOUT_SECONDS, S3_FIRST_BYTE_TIMEOUT_SECONDS, S3_MIN_UPLOAD_RATE_BYTES
  AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...  S3 storage (standard AWS SDK variables)
  RUST_LOG, LOG_FORMAT=json, NO_COLOR  logging";

/// `serve --help`'s list.
pub fn serve_help() -> &'static str {
    SERVE
}
