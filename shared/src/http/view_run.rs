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

/// The parameters as read, before they are checked together.
struct RunParams {
    view: Option<sof::View>,
    format: String,
    header: bool,
    limit: usize,
    patient: Option<String>,
    resources: Option<Vec<Value>>,
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
    let mut run = RunParams {
        view: None,
        format: "json".to_string(),
        header: true,
        limit: MAX_ROWS,
        patient: None,
        resources: None,
    };
    for (i, p) in params.iter().enumerate() {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("parameter[{i}] has no name")))?;
        run.add(name, p, stored)?;
    }
    let view = run
        .view
        .ok_or_else(|| bad("viewResource or viewReference: a view is required"))?;
    Ok(RunRequest {
        view,
        format: run_format(&run.format, run.header)?,
        limit: run.limit,
        patient: run.patient,
        resources: run.resources,
    })
}

impl RunParams {
    /// Reads one parameter.
    fn add(
        &mut self,
        name: &str,
        p: &Value,
        stored: &crate::views::StoredViews,
    ) -> Result<(), ApiError> {
        match name {
            "viewResource" | "viewReference" => self.view = Some(view_of(name, p, stored)?),
            "_format" => self.format = views::text(p, name).map_err(|e| bad(e.to_string()))?,
            "header" => {
                self.header = p
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
                self.limit = usize::try_from(n).unwrap_or(MAX_ROWS).min(MAX_ROWS);
            }
            "patient" => {
                let r = views::reference(p, name).map_err(|e| bad(e.to_string()))?;
                let id = r.strip_prefix("Patient/").unwrap_or(&r);
                if !crate::export::params::is_fhir_id(id) {
                    return Err(bad(format!("patient: {r:?} is not a Patient reference")));
                }
                self.patient = Some(id.to_string());
            }
            "resource" => {
                let r = p
                    .get("resource")
                    .ok_or_else(|| bad("resource: a resource"))?
                    .clone();
                self.resources.get_or_insert_with(Vec::new).push(r);
            }
            other => {
                return Err(ApiError::NotSupported(format!(
                    "{other}: not a parameter of $viewdefinition-run this server takes \
                     (viewResource, viewReference, _format, header, _limit, patient, resource)"
                )))
            }
        }
        Ok(())
    }
}

/// The view of a `viewResource` (inline) or `viewReference` (stored) parameter, validated.
fn view_of(
    name: &str,
    p: &Value,
    stored: &crate::views::StoredViews,
) -> Result<sof::View, ApiError> {
    let definition = if name == "viewResource" {
        p.get("resource")
            .ok_or_else(|| bad("viewResource: a resource"))?
    } else {
        let reference = p
            .get("valueReference")
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad("viewReference: a valueReference"))?;
        crate::views::stored_view(reference, stored, "parameter").map_err(|e| bad(e.to_string()))?
    };
    sof::View::from_json(definition)
        .map_err(|e| bad(format!("{name}: {}: {}", e.expression(), e.message())))
}

/// What `_format` asks for: JSON rows, or one of the export's file formats.
fn run_format(format: &str, header: bool) -> Result<RunFormat, ApiError> {
    let f = format.trim();
    if f.eq_ignore_ascii_case("json") || f.eq_ignore_ascii_case("application/json") {
        return Ok(RunFormat::Json);
    }
    let code = crate::views::format_code(format).ok_or_else(|| {
        ApiError::NotSupported(format!(
            "_format: {format:?} is not supported (json, ndjson, csv or parquet)"
        ))
    })?;
    let file = sof_files::Format::parse(code, header).map_err(|e| bad(format!("_format: {e}")))?;
    Ok(RunFormat::File(file))
}

pub async fn run(state: &AppState, req: &Request, ctx: &Ctx) -> Result<Response, ApiError> {
    super::kickoff::check_json_body(req)?;
    let stored = super::kickoff::stored_views(state, req.body()).await?;
    let run = parse(req.body(), &stored)?;
    check_scope(ctx, run.view.resource_type())?;
    let mut rows = Rows {
        view: &run.view,
        limit: run.limit,
        flat: Vec::new(),
    };
    match &run.resources {
        Some(resources) => {
            for r in resources {
                if rows.add(&sof::Json::from(r))? {
                    break;
                }
            }
        }
        None => rows.add_stored(state, run.patient.as_deref()).await?,
    }
    let (content_type, body) = encode(&run, rows.into_flat())?;
    let mut resp = http::Response::new(Body::Full(bytes::Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// A view reads only a type the token's scopes cover.
fn check_scope(ctx: &Ctx, resource_type: &str) -> Result<(), ApiError> {
    if let Some(TypeSet::Only(allowed)) = ctx.principal.as_ref().map(|p| &p.types) {
        if !allowed.iter().any(|t| t == resource_type) {
            return Err(ApiError::Forbidden(format!(
                "the access token's scopes do not cover {resource_type}, the view's resource"
            )));
        }
    }
    Ok(())
}

/// The rows of a run so far, flattened (`view.columns().len()` values each).
struct Rows<'v> {
    view: &'v sof::View,
    limit: usize,
    flat: Vec<Value>,
}

impl Rows<'_> {
    /// Adds the rows of `resource`; whether the run has its `_limit` of rows.
    fn add(&mut self, resource: &sof::Json<'_>) -> Result<bool, ApiError> {
        self.view
            .append_json_rows(resource, &mut self.flat)
            .map_err(|e| {
                ApiError::Unprocessable(format!(
                    "the view cannot run on {}/{}: {}: {}",
                    resource
                        .get("resourceType")
                        .and_then(sof::Json::as_str)
                        .unwrap_or("?"),
                    resource
                        .get("id")
                        .and_then(sof::Json::as_str)
                        .unwrap_or("?"),
                    e.expression(),
                    e.message()
                ))
            })?;
        let width = self.view.columns().len();
        Ok(width > 0 && self.flat.len() / width >= self.limit)
    }

    /// Adds the rows of the stored resources of the view's type (of `patient`'s compartment),
    /// a page at a time, until the limit; refused past [`RUN_BUDGET`].
    async fn add_stored(
        &mut self,
        state: &AppState,
        patient: Option<&str>,
    ) -> Result<(), ApiError> {
        let started = Instant::now();
        let resource_type = self.view.resource_type().to_string();
        let mut after = String::new();
        loop {
            let page = crate::db::resources::select_resource_page(
                &state.pool,
                &resource_type,
                &after,
                PAGE,
                patient,
            )
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after.clone_from(last);
            for (id, text) in &page {
                let resource = sof::Json::parse(text.as_bytes()).map_err(|e| {
                    ApiError::Internal(
                        format!("stored {resource_type}/{id} is not JSON: {e}").into(),
                    )
                })?;
                if self.add(&resource)? {
                    return Ok(());
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

    /// The rows, at most `limit`.
    fn into_flat(mut self) -> Vec<Value> {
        let width = self.view.columns().len();
        if width > 0 {
            self.flat.truncate(self.limit.saturating_mul(width));
        }
        self.flat
    }
}

/// The answer's media type and body: the rows as a JSON array of objects, or as a file.
fn encode(run: &RunRequest, flat: Vec<Value>) -> Result<(&'static str, Vec<u8>), ApiError> {
    let columns = run.view.columns();
    match run.format {
        RunFormat::Json => {
            let rows: Vec<Value> = flat
                .chunks(columns.len().max(1))
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
            let body = serde_json::to_vec(&rows).map_err(|e| ApiError::Internal(Box::new(e)))?;
            Ok(("application/json", body))
        }
        RunFormat::File(format) => {
            let unprocessable = |e: sof_files::EncodeError| ApiError::Unprocessable(e.to_string());
            let mut encoder = sof_files::Encoder::new(format, columns).map_err(unprocessable)?;
            encoder.push(&flat).map_err(unprocessable)?;
            let mut out = Vec::new();
            encoder.drain_ready(&mut out);
            encoder.finish(&mut out).map_err(unprocessable)?;
            Ok((format.content_type(), out))
        }
    }
}
