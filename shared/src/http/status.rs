//! `GET|DELETE [base]/$exportstatus?_id=…`: the job's status (202 with progress, 200 with the
//! manifest, 500 for a failed job) and its cancellation, through crate::service::jobs.

use http::{header, HeaderValue, StatusCode};
use uuid::Uuid;

use super::router::Ctx;
use super::{
    json_response, outcome_response, query_pairs, query_param, ApiError, Request, Response,
};
use crate::app::AppState;
use crate::export::manifest;
use crate::fhir::instant::http_date;
use crate::fhir::OperationOutcome;
use crate::service::jobs::{self, JobView};

fn job_id(req: &Request) -> Result<Uuid, ApiError> {
    let pairs = query_pairs(req);
    let raw = query_param(&pairs, "_id")
        .ok_or_else(|| ApiError::BadRequest("the _id parameter is required".into()))?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::NotFound("no such export job".into()))
}

pub async fn status(state: &AppState, req: &Request, ctx: &Ctx) -> Result<Response, ApiError> {
    match jobs::job_status(state, job_id(req)?, ctx.client_id()).await? {
        JobView::InProgress { progress } => {
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
        JobView::Complete { job, files } => {
            // With authorization on, downloads go through $exportfilerequest with the token.
            let manifest = manifest::build(&job, &files, &ctx.base, state.config.auth.is_on());
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
        JobView::Failed { job } => Ok(outcome_response(
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
    }
}

pub async fn cancel(state: &AppState, req: &Request, ctx: &Ctx) -> Result<Response, ApiError> {
    let id = job_id(req)?;
    jobs::cancel(state, id, ctx.client_id()).await?;
    Ok(outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!(
            "export job {id} is being cancelled and its files deleted"
        )),
    ))
}
