//! Kick-off: `GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export`.
//! Parses the request (headers, query, a POST's Parameters body) and starts the export through
//! the service layer (crate::service::export), which holds the rules.

use http::{header, HeaderValue, Method, StatusCode};

use super::router::Ctx;
use super::{header_str, outcome_response, query_pairs, ApiError, Request, Response};
use crate::app::AppState;
use crate::export::params::{self, KickoffError};
use crate::export::ExportLevel;
use crate::fhir::OperationOutcome;
use crate::service::export::{start_export, StartExport};

pub async fn kickoff(
    state: &AppState,
    req: &Request,
    ctx: &Ctx,
    level: ExportLevel,
) -> Result<Response, ApiError> {
    let post = req.method() == Method::POST;
    let prefs = params::check_headers(
        header_str(req, header::ACCEPT),
        header_str(req, header::HeaderName::from_static("prefer")),
    )
    .map_err(kickoff_error)?;
    let mut pairs = query_pairs(req);
    if post {
        check_json_body(req)?;
        pairs.extend(params::parameters_body(req.body()).map_err(kickoff_error)?);
    }
    let params = params::parse_params(
        level,
        &pairs,
        &state.config.additional_resources,
        prefs.lenient,
    )
    .map_err(kickoff_error)?;
    // The IG's `request` is the kick-off URL (for POST, without the body's parameters).
    let request_url = match req.uri().query() {
        Some(q) if !q.is_empty() => format!("{}{}?{q}", ctx.base, ctx.route_path),
        _ => format!("{}{}", ctx.base, ctx.route_path),
    };
    let job_id = start_export(
        state,
        StartExport {
            level,
            group_id: ctx.id.as_deref(),
            params,
            principal: ctx.principal.as_ref(),
            lenient: prefs.lenient,
            request_url,
        },
    )
    .await?;
    accepted(ctx, job_id)
}

/// `POST [base]/$viewdefinition-export` and `[base]/ViewDefinition/$viewdefinition-export`
/// (SQL on FHIR): a Parameters body with the views (validated now), `_format`, `header`,
/// `patient`, `group`, `_since` and `clientTrackingId`; then the same job, checks, status URL
/// and files as `$export`.
pub async fn view_kickoff(
    state: &AppState,
    req: &Request,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed(
            "$viewdefinition-export is POST with a Parameters body".into(),
        ));
    }
    params::check_headers(
        header_str(req, header::ACCEPT),
        header_str(req, header::HeaderName::from_static("prefer")),
    )
    .map_err(kickoff_error)?;
    check_json_body(req)?;
    let stored = stored_views(state, req.body()).await?;
    let kickoff =
        crate::views::parse_kickoff(req.body(), &state.config.additional_resources, &stored)
            .map_err(kickoff_error)?;
    let job_id = start_export(
        state,
        StartExport {
            level: kickoff.level,
            group_id: kickoff.group_id.as_deref(),
            params: kickoff.params,
            principal: ctx.principal.as_ref(),
            // A view cannot be narrowed: a type it cannot read is refused.
            lenient: false,
            request_url: format!("{}{}", ctx.base, ctx.route_path),
        },
    )
    .await?;
    accepted(ctx, job_id)
}

/// The stored ViewDefinitions a body's `viewReference`s name.
pub(super) async fn stored_views(
    state: &AppState,
    body: &[u8],
) -> Result<crate::views::StoredViews, ApiError> {
    let ids = crate::views::referenced_views(body);
    Ok(
        crate::db::resources::select_view_definitions(&state.pool, &ids)
            .await?
            .into_iter()
            .collect(),
    )
}

/// 202 with the status URL of a new job.
fn accepted(ctx: &Ctx, job_id: uuid::Uuid) -> Result<Response, ApiError> {
    let status_url = format!("{}/$exportstatus?_id={job_id}", ctx.base);
    let mut resp = outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!("Export job {job_id} accepted; poll {status_url}")),
    );
    resp.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_str(&status_url).map_err(|e| ApiError::Internal(Box::new(e)))?,
    );
    Ok(resp)
}

/// A POST body must be FHIR JSON (Content-Type `application/fhir+json` or `application/json`).
pub(super) fn check_json_body(req: &Request) -> Result<(), ApiError> {
    if let Some(ct) = header_str(req, header::CONTENT_TYPE) {
        let media = ct.split(';').next().unwrap_or("").trim();
        if !matches!(media, "application/fhir+json" | "application/json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body is a FHIR Parameters resource (application/fhir+json), not {media}"
            )));
        }
    }
    Ok(())
}

fn kickoff_error(e: KickoffError) -> ApiError {
    match e {
        KickoffError::InvalidParameter(m) | KickoffError::InvalidHeader(m) => {
            ApiError::BadRequest(m)
        }
        KickoffError::NotSupported(m) => ApiError::NotSupported(m),
        KickoffError::NotAcceptable(m) => ApiError::NotAcceptable(m),
    }
}
