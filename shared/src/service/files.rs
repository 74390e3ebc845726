//! Opening an output file: only a Complete, unexpired, undeleted job's, only the client's own, and
//! only by one of our file names.

use chrono::Utc;
use uuid::Uuid;

use super::ServiceError;
use crate::app::AppState;
use crate::db::{files, jobs};
use crate::export::JobStatus;
use crate::storage::Download;

/// A file the client may download.
pub struct OpenedFile {
    pub download: Download,
    pub byte_count: i64,
}

fn no_such_file() -> ServiceError {
    ServiceError::NotFound("no such export file".into())
}

/// Whether `name` can be one of our file names: `<Type>-0001.ndjson`,
/// `OperationOutcome-….ndjson`, `Bundle-deleted-….ndjson`.
fn plausible(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.contains("..")
}

/// The file `name` of job `id` for `client_id`: a presigned URL or a local path, of its gzip copy
/// when `gzip` and the store keeps one (stored with `Content-Encoding: gzip`). Anything the client
/// may not see is answered like a file that does not exist.
pub async fn open_file(
    state: &AppState,
    id: Uuid,
    name: &str,
    client_id: Option<&str>,
    gzip: bool,
) -> Result<OpenedFile, ServiceError> {
    if !plausible(name) {
        return Err(no_such_file());
    }
    let job = jobs::get_job(&state.pool, id)
        .await?
        .filter(|j| j.visible_to(client_id))
        .ok_or_else(no_such_file)?;
    let visible = job.status == JobStatus::Complete
        && job.deleted_at.is_none()
        && job.expires_at.is_none_or(|e| e > Utc::now());
    if !visible {
        return Err(no_such_file());
    }
    let file = files::get_file(&state.pool, id, name)
        .await?
        .ok_or_else(no_such_file)?;
    let key = match &file.gzip_object_key {
        Some(copy) if gzip => copy,
        _ => &file.object_key,
    };
    Ok(OpenedFile {
        download: state.store.download(key, state.config.presign_ttl).await?,
        byte_count: file.byte_count,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_our_file_names_are_looked_up() {
        assert!(super::plausible("Observation-0001.ndjson"));
        assert!(super::plausible("Bundle-deleted-0001.ndjson"));
        assert!(!super::plausible("../secrets"));
        assert!(!super::plausible("a/b.ndjson"));
        assert!(!super::plausible(""));
    }
}
