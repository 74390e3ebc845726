//! A client's view of its jobs: status (with poll throttling) and cancellation. Another client's
//! job is answered exactly like an unknown one; a cancelled or deleted one is gone (404, or 410
//! where configured), an expired one unknown.

use chrono::Utc;
use uuid::Uuid;

use super::ServiceError;
use crate::app::AppState;
use crate::db::{files, jobs, polls};
use crate::export::{Job, JobStatus};

/// What a status request shows.
pub enum JobView {
    /// Queued or running: what it is doing ("Active: 3 of 10 parts exported").
    InProgress { progress: String },
    /// Done: the job and its files, for the manifest.
    Complete {
        job: Job,
        files: Vec<crate::export::manifest::ExportFile>,
    },
    /// Failed: the reason the client may be told.
    Failed { job: Job },
}

fn unknown() -> ServiceError {
    ServiceError::NotFound("no such export job".into())
}

/// The job, if `client_id` may still see it.
async fn visible_job(
    state: &AppState,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Job, ServiceError> {
    let job = jobs::get_job_for_status(&state.pool, id)
        .await?
        .filter(|j| j.visible_to(client_id))
        .ok_or_else(unknown)?;
    let cancelled = matches!(
        job.status,
        JobStatus::CancellationRequested | JobStatus::Cancelled
    ) || job.deleted_at.is_some();
    if cancelled {
        let msg = format!("export job {} was cancelled or deleted", job.id);
        return Err(ServiceError::Cancelled {
            message: msg,
            answer: state.config.cancelled_status,
        });
    }
    if job.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ServiceError::NotFound(format!(
            "export job {} has expired",
            job.id
        )));
    }
    Ok(job)
}

/// The job's status for `client_id`; polling a running job more often than the configured
/// interval is refused (429).
pub async fn job_status(
    state: &AppState,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<JobView, ServiceError> {
    let job = visible_job(state, id, client_id).await?;
    Ok(match job.status {
        JobStatus::Queued | JobStatus::Active => {
            let interval = state.config.min_poll_interval;
            if !interval.is_zero() && !polls::record_poll(&state.pool, id, interval).await? {
                return Err(ServiceError::TooManyRequests {
                    message: format!(
                        "polling too often; wait {} s (Retry-After) between status requests",
                        state.config.retry_after_seconds
                    ),
                    retry_after: state.config.retry_after_seconds,
                });
            }
            let progress = if job.status == JobStatus::Queued {
                "Queued".to_string()
            } else if !job.planned {
                "Active: planning".to_string()
            } else {
                match jobs::select_progress(&state.pool, id).await? {
                    jobs::JobProgress::Items { done, all } => {
                        format!("Active: {done} of {all} parts exported")
                    }
                    jobs::JobProgress::Patients { done, all } => {
                        format!("Active: {done} of {all} patients exported")
                    }
                }
            };
            JobView::InProgress { progress }
        }
        JobStatus::Complete => JobView::Complete {
            files: files::select_files(&state.pool, id).await?,
            job,
        },
        JobStatus::Failed => JobView::Failed { job },
        JobStatus::CancellationRequested | JobStatus::Cancelled => {
            return Err(ServiceError::NotFound("export job was cancelled".into()))
        }
    })
}

/// Requests the job's cancellation and wakes the exporter, which deletes its files.
pub async fn cancel(
    state: &AppState,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<(), ServiceError> {
    let job = visible_job(state, id, client_id).await?;
    if !jobs::request_cancellation(&state.pool, job.id).await? {
        return Err(unknown());
    }
    if let Err(e) = state.queue.send(job.id).await {
        tracing::warn!(job_id = %job.id, error = %e, "wake-up for cancellation not sent; the schedule will clean up");
    }
    tracing::info!(job_id = %job.id, "export cancellation requested");
    Ok(())
}
