//! `GET|DELETE [base]/$exportstatus?_id=…`.

use chrono::Utc;
use http::{header, HeaderValue, Method, StatusCode};
use uuid::Uuid;

use super::{
    base_url, json_response, normalized_path, not_found_route, outcome_response, query_pairs,
    query_param, ApiError, AppState, Request, Response,
};
use crate::db::{jobs, work_items};
use crate::export::{manifest, Job, JobStatus};
use crate::fhir::instant::http_date;
use crate::fhir::OperationOutcome;

pub async fn handle(state: &AppState, req: Request) -> Response {
    let path = normalized_path(&req);
    let Some(prefix) = path.strip_suffix("/$exportstatus") else {
        return not_found_route(&req);
    };
    let base = match base_url(&state.config, &req, prefix) {
        Ok(base) => base,
        Err(e) => return e.into_response(),
    };
    let principal = match crate::auth::authenticate(state, &req, &base).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let client_id = principal.as_ref().map(|p| p.client_id.as_str());
    let result = match *req.method() {
        Method::GET => status(state, &req, &base, client_id).await,
        Method::DELETE => delete(state, &req, client_id).await,
        _ => Err(ApiError::MethodNotAllowed(
            "$exportstatus supports GET and DELETE".into(),
        )),
    };
    result.unwrap_or_else(ApiError::into_response)
}

fn job_id(req: &Request) -> Result<Uuid, ApiError> {
    let pairs = query_pairs(req);
    let raw = query_param(&pairs, "_id")
        .ok_or_else(|| ApiError::BadRequest("the _id parameter is required".into()))?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::NotFound("no such export job".into()))
}

/// A job the client can no longer see: unknown, cancelled, deleted or expired.
fn gone(state: &AppState, job: &Job) -> Option<ApiError> {
    let msg = format!("export job {} was cancelled or deleted", job.id);
    let cancelled = matches!(
        job.status,
        JobStatus::CancellationRequested | JobStatus::Cancelled
    ) || job.deleted_at.is_some();
    if cancelled {
        return Some(if state.config.cancelled_status_code == 410 {
            ApiError::Gone(msg)
        } else {
            ApiError::NotFound(msg)
        });
    }
    if job.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Some(ApiError::NotFound(format!(
            "export job {} has expired",
            job.id
        )));
    }
    None
}

/// The job named by `_id`, if the client may still see it. Another client's job is answered
/// exactly like an unknown one.
async fn visible_job(
    state: &AppState,
    req: &Request,
    client_id: Option<&str>,
) -> Result<Job, ApiError> {
    let job = jobs::get_job_for_status(&state.pool, job_id(req)?)
        .await?
        .filter(|j| j.visible_to(client_id))
        .ok_or_else(|| ApiError::NotFound("no such export job".into()))?;
    match gone(state, &job) {
        Some(e) => Err(e),
        None => Ok(job),
    }
}

async fn status(
    state: &AppState,
    req: &Request,
    base: &str,
    client_id: Option<&str>,
) -> Result<Response, ApiError> {
    let job = visible_job(state, req, client_id).await?;
    let id = job.id;
    match job.status {
        JobStatus::Queued | JobStatus::Active => {
            let interval = state.config.min_poll_interval;
            if !interval.is_zero() && !jobs::record_poll(&state.pool, id, interval).await? {
                return Err(ApiError::TooManyRequests {
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
            let mut resp = outcome_response(
                StatusCode::ACCEPTED,
                &OperationOutcome::information(progress.clone()),
            );
            let h = resp.headers_mut();
            h.insert(
                "x-progress",
                HeaderValue::from_str(&progress).unwrap_or(HeaderValue::from_static("in progress")),
            );
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(state.config.retry_after_seconds),
            );
            Ok(resp)
        }
        JobStatus::Complete => {
            let files = work_items::select_files(&state.pool, id).await?;
            // With authorization on, downloads go through $exportfilerequest with the token.
            let manifest = manifest::build(&job, &files, base, state.config.auth.is_on());
            let body =
                serde_json::to_string(&manifest).map_err(|e| ApiError::Internal(Box::new(e)))?;
            let mut resp = json_response(StatusCode::OK, "application/json", body);
            if let Some(expires) = job.expires_at {
                if let Ok(v) = HeaderValue::from_str(&http_date(&expires)) {
                    resp.headers_mut().insert(header::EXPIRES, v);
                }
            }
            Ok(resp)
        }
        JobStatus::Failed => Ok(outcome_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &OperationOutcome::error(
                "exception",
                format!(
                    "export job {} failed: {}",
                    job.id,
                    job.public_error.as_deref().unwrap_or(
                        "the export could not be completed; the server operator has the details"
                    )
                ),
            ),
        )),
        JobStatus::CancellationRequested | JobStatus::Cancelled => {
            Err(ApiError::NotFound("export job was cancelled".into()))
        }
    }
}

async fn delete(
    state: &AppState,
    req: &Request,
    client_id: Option<&str>,
) -> Result<Response, ApiError> {
    let job = visible_job(state, req, client_id).await?;
    let id = job.id;
    if !jobs::request_cancellation(&state.pool, id).await? {
        return Err(ApiError::NotFound("no such export job".into()));
    }
    if let Err(e) = state.queue.send(id).await {
        tracing::warn!(job_id = %id, error = %e, "wake-up for cancellation not sent; the schedule will clean up");
    }
    tracing::info!(job_id = %id, "export cancellation requested");
    Ok(outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!(
            "export job {id} is being cancelled and its files deleted"
        )),
    ))
}
