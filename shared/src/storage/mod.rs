//! Object storage port: where ndjson files are written and how clients download them.
//!
//! Adapters: [`s3::S3Store`] (aws-sdk-s3; AWS, LocalStack, moto, any S3 endpoint) and
//! [`local::LocalStore`] (a directory, for the embedded single-machine setup).

pub mod local;
pub mod s3;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::StoragePath;

pub const NDJSON_CONTENT_TYPE: &str = "application/fhir+ndjson";

/// The media type of an export file, by its name: ndjson, or a view's CSV or Parquet file.
pub fn content_type_of(file_name: &str) -> &'static str {
    if file_name.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else if file_name.ends_with(".csv") {
        "text/csv"
    } else {
        NDJSON_CONTENT_TYPE
    }
}

/// Whether gzip makes a file smaller (a Parquet file is compressed already).
pub fn compressible(file_name: &str) -> bool {
    !file_name.ends_with(".parquet")
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key {key:?}")]
    InvalidKey { key: String },
    #[error("object {key:?} not found")]
    NotFound { key: String },
    /// The unfinished object of a writer is no longer there when it is finished: another
    /// writer of the same key finished it first (an exporter stopped past its lease, whose item
    /// another exporter took), or the job's files were deleted meanwhile. Nothing was published.
    #[error("the unfinished file of {key:?} is gone (another exporter finished it, or its job's files were deleted)")]
    PartialGone { key: String },
    #[error("local storage I/O on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 {operation} on {key:?}")]
    S3 {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// S3 did not answer in time, could not be reached, or answered with a server error:
        /// an outage to ride out rather than an attempt that failed
        /// ([`StorageError::unavailable`]).
        unavailable: bool,
    },
    /// A function that does not declare the action (infra/functions.json) tried it.
    #[error("{action} on {key:?}: {message}")]
    NotDeclared {
        action: &'static str,
        key: String,
        message: String,
    },
}

impl StorageError {
    /// The storage is out of reach (S3 timing out, unreachable, or answering 5xx), as opposed
    /// to refusing this request: the exporter waits for it (up to STORAGE_OUTAGE_SECONDS)
    /// without counting attempts.
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            StorageError::S3 {
                unavailable: true,
                ..
            }
        )
    }
}

/// How a client gets a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// A short-lived presigned URL to redirect to.
    Redirect(String),
    /// A local file to stream.
    File(PathBuf),
}

/// Storage of export files. Keys are relative (`<job id>/<file name>`); the adapter adds its
/// configured prefix.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Starts a new object. Nothing is visible under `key` until [`ObjectWriter::finish`].
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Deletes every object under `prefix`; returns how many were deleted. Objects that another
    /// process deletes at the same time (two exporters purging one job) are no error.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError>;
    /// How a client downloads `key`.
    async fn download(&self, key: &str, ttl: Duration) -> Result<Download, StorageError>;
    /// Reads a whole object (tests and small objects only).
    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError>;
    /// How long one call (a writer's `write` or `finish` included) may take before it is
    /// overdue: the exporter's heartbeat stops renewing a lease whose storage call runs longer,
    /// so another exporter takes the item. None: no bound (local files).
    fn call_deadline(&self) -> Option<Duration> {
        None
    }
}

/// A finished object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size of the object in bytes (uncompressed).
    pub bytes: u64,
    /// Key of a gzip-compressed copy stored beside it (stored with `Content-Encoding: gzip`), for
    /// clients that send `Accept-Encoding: gzip` to a store that cannot compress on the way out.
    pub gzip_key: Option<String>,
}

#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError>;
    /// Makes the object (and its gzip copy, if the store keeps one) visible.
    async fn finish(self: Box<Self>) -> Result<Written, StorageError>;
    /// Discards everything written.
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// Keys are built from job ids and generated file names; anything else is refused.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey {
            key: key.to_string(),
        })
    }
}

/// The store `STORAGE_PATH` names, with the configuration's S3 settings.
pub async fn from_config(config: &crate::Config) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(match &config.storage_path {
        StoragePath::Local(dir) => Arc::new(local::LocalStore::new(dir.clone())?),
        StoragePath::S3 { bucket, prefix } => {
            Arc::new(s3::S3Store::from_settings(bucket.clone(), prefix.clone(), config.s3).await)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_prefix() {
        assert!(validate_key("0d7c/Patient-1.ndjson").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a\\b",
            "..",
            "a/%2e",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
