//! `POST [base]/$viewdefinition-run` and `[base]/ViewDefinition/$viewdefinition-run` (SQL on
//! FHIR): a view's rows at once, for small results and for trying a view out. Parameters:
//! `viewResource` (inline) or `viewReference` (stored), `_format` (json, ndjson, csv, parquet), `header`, `_limit`,
//! `patient`, and `resource` (inline resources to run the view over instead of stored data).
//! A run that does not finish within [`RUN_BUDGET`] is refused with a hint to export instead.

use std::time::{Duration, Instant};

use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use super::router::Ctx;
use super::{ApiError, Body, Request, Response};
use crate::app::AppState;
use crate::auth::TypeSet;
use crate::views;

/// A run's rows, at most (`_limit` may ask for fewer).
pub const MAX_ROWS: usize = 10_000;
/// How long a run may read and evaluate (API Gateway answers 504 after 29 s).
pub const RUN_BUDGET: Duration = Duration::from_secs(20);
/// Stored resources read per query.
const PAGE: i64 = 500;

struct RunRequest {
    view: sof::View,
    format: RunFormat,
    limit: usize,
    patient: Option<String>,
    resources: Option<Vec<Value>>,
}

enum RunFormat {
    /// A JSON array of row objects.
    Json,
    File(sof_files::Format),
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::BadRequest(m.into())
}

fn parse(body: &[u8], stored: &crate::views::StoredViews) -> Result<RunRequest, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body must be a FHIR Parameters resource"));
    }
    let empty = Vec::new();
    let params = v
        .get("parameter")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut view = None;
    let mut format = "json".to_string();
    let mut header = true;
    let mut limit = MAX_ROWS;
    let mut patient = None;
    let mut resources: Option<Vec<Value>> = None;
    for (i, p) in params.iter().enumerate() {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("parameter[{i}] has no name")))?;
        match name {
            "viewResource" => {
                let definition = p
                    .get("resource")
                    .ok_or_else(|| bad("viewResource: a resource"))?;
                let parsed = sof::View::from_json(definition).map_err(|e| {
                    bad(format!("viewResource: {}: {}", e.expression(), e.message()))
                })?;
                view = Some(parsed);
            }
            "viewReference" => {
                let reference = p
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("viewReference: a valueReference"))?;
                let definition = crate::views::stored_view(reference, stored, "parameter")
                    .map_err(|e| bad(e.to_string()))?;
                view = Some(sof::View::from_json(definition).map_err(|e| {
                    bad(format!(
                        "viewReference: {}: {}",
                        e.expression(),
                        e.message()
                    ))
                })?);
            }
            "_format" => format = views::text(p, name).map_err(|e| bad(e.to_string()))?,
            "header" => {
                header = p
                    .get("valueBoolean")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| bad("header: a valueBoolean"))?
            }
            "_limit" => {
                let n = p
                    .get("valueInteger")
                    .or_else(|| p.get("valuePositiveInt"))
                    .and_then(Value::as_u64)
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("_limit: a positive valueInteger"))?;
                limit = usize::try_from(n).unwrap_or(MAX_ROWS).min(MAX_ROWS);
            }
            "patient" => {
                let r = views::reference(p, name).map_err(|e| bad(e.to_string()))?;
                let id = r.strip_prefix("Patient/").unwrap_or(&r);
                if !crate::export::params::is_fhir_id(id) {
                    return Err(bad(format!("patient: {r:?} is not a Patient reference")));
                }
                patient = Some(id.to_string());
            }
            "resource" => {
                let r = p
                    .get("resource")
                    .ok_or_else(|| bad("resource: a resource"))?
                    .clone();
                resources.get_or_insert_with(Vec::new).push(r);
            }
            other => {
                return Err(ApiError::NotSupported(format!(
                    "{other}: not a parameter of $viewdefinition-run this server takes \
                     (viewResource, viewReference, _format, header, _limit, patient, resource)"
                )))
            }
        }
    }
    let view = view.ok_or_else(|| bad("viewResource or viewReference: a view is required"))?;
    let format = if format.trim().eq_ignore_ascii_case("json")
        || format.trim().eq_ignore_ascii_case("application/json")
    {
        RunFormat::Json
    } else {
        let code = crate::views::format_code(&format).ok_or_else(|| {
            ApiError::NotSupported(format!(
                "_format: {format:?} is not supported (json, ndjson, csv or parquet)"
            ))
        })?;
        RunFormat::File(
            sof_files::Format::parse(code, header).map_err(|e| bad(format!("_format: {e}")))?,
        )
    };
    Ok(RunRequest {
        view,
        format,
        limit,
        patient,
        resources,
    })
}

pub async fn run(state: &AppState, req: &Request, ctx: &Ctx) -> Result<Response, ApiError> {
    super::kickoff::check_json_body(req)?;
    let stored = super::kickoff::stored_views(state, req.body()).await?;
    let run = parse(req.body(), &stored)?;
    let resource_type = run.view.resource_type().to_string();
    if let Some(p) = &ctx.principal {
        if let TypeSet::Only(allowed) = &p.types {
            if !allowed.contains(&resource_type) {
                return Err(ApiError::Forbidden(format!(
                    "the access token's scopes do not cover {resource_type}, the view's resource"
                )));
            }
        }
    }
    let started = Instant::now();
    let width = run.view.columns().len();
    let mut flat: Vec<Value> = Vec::new();
    let evaluate = |resource: &Value, flat: &mut Vec<Value>| -> Result<(), ApiError> {
        run.view.append_rows(resource, flat).map_err(|e| {
            ApiError::Unprocessable(format!(
                "the view cannot run on {}/{}: {}: {}",
                resource
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                resource.get("id").and_then(Value::as_str).unwrap_or("?"),
                e.expression(),
                e.message()
            ))
        })?;
        Ok(())
    };
    match &run.resources {
        Some(resources) => {
            for r in resources {
                evaluate(r, &mut flat)?;
                if width > 0 && flat.len() / width >= run.limit {
                    break;
                }
            }
        }
        None => {
            let mut after = String::new();
            'pages: loop {
                let page = crate::db::resources::select_resource_page(
                    &state.pool,
                    &resource_type,
                    &after,
                    PAGE,
                    run.patient.as_deref(),
                )
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after.clone_from(last);
                for (id, text) in &page {
                    let resource: Value = serde_json::from_str(text).map_err(|e| {
                        ApiError::Internal(
                            format!("stored {resource_type}/{id} is not JSON: {e}").into(),
                        )
                    })?;
                    evaluate(&resource, &mut flat)?;
                    if width > 0 && flat.len() / width >= run.limit {
                        break 'pages;
                    }
                }
                if started.elapsed() > RUN_BUDGET {
                    return Err(ApiError::TooCostly(format!(
                        "the view did not finish within {} s; run it with $viewdefinition-export \
                         (asynchronous, no size limit), or narrow it (_limit, patient)",
                        RUN_BUDGET.as_secs()
                    )));
                }
            }
        }
    }
    if width > 0 {
        flat.truncate(run.limit.saturating_mul(width));
    }
    let (content_type, body) = match run.format {
        RunFormat::Json => {
            let columns = run.view.columns();
            let rows: Vec<Value> = flat
                .chunks(width.max(1))
                .map(|row| {
                    Value::Object(
                        columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| (c.name().to_string(), v.clone()))
                            .collect(),
                    )
                })
                .collect();
            (
                "application/json",
                serde_json::to_vec(&rows).map_err(|e| ApiError::Internal(Box::new(e)))?,
            )
        }
        RunFormat::File(format) => {
            let content_type = format.content_type();
            let mut encoder = sof_files::Encoder::new(format, run.view.columns())
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
            encoder
                .push(&flat)
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
            let mut out = Vec::new();
            encoder.drain_ready(&mut out);
            encoder
                .finish(&mut out)
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
            (content_type, out)
        }
    };
    let mut resp = http::Response::new(Body::Full(bytes::Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}
