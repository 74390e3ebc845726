//! The business rules behind the HTTP routes, free of HTTP: who may start an export and of what
//! (scopes, the Group and its patients, the per-client limits), what a client may see of a job
//! (its own, not cancelled, not expired), how often it may poll, and which files it may open.
//! Handlers (`crate::http`) parse a request, call one of these and turn the result or the
//! [`ServiceError`] into a response in one place.

pub mod export;
pub mod files;
pub mod jobs;

use crate::db::DbError;
use crate::storage::StorageError;

/// Why a service call refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request asks for something that cannot be (400).
    #[error("{0}")]
    Invalid(String),
    /// The client's scopes do not cover it (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown, or not the client's to see (404).
    #[error("{0}")]
    NotFound(String),
    /// Cancelled or deleted: answered as configured (`CANCELLED_STATUS_CODE`: 404 as if
    /// unknown, or 410 Gone).
    #[error("{message}")]
    Cancelled {
        message: String,
        answer: crate::config::CancelledStatus,
    },
    /// A limit of the client's (429 with Retry-After).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
