//! Kick-off: `GET [base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export`
//! (and `GET [base]/metadata`, served by the same function).

use http::{header, HeaderValue, Method, StatusCode};

use super::{
    base_url, header_str, json_response, metadata, normalized_path, not_found_route,
    outcome_response, query_pairs, ApiError, AppState, Request, Response,
};
use crate::db::{jobs, resources};
use crate::export::params::{self, is_fhir_id, KickoffError};
use crate::export::ExportLevel;
use crate::fhir::OperationOutcome;

/// Where a kick-off path points.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub prefix: &'a str,
    pub level: ExportLevel,
    pub group_id: Option<&'a str>,
}

pub fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_suffix("/$export")?;
    if let Some(prefix) = rest.strip_suffix("/Patient") {
        return Some(Route {
            prefix,
            level: ExportLevel::Patient,
            group_id: None,
        });
    }
    if let Some((before, id)) = rest.rsplit_once('/') {
        if let Some(prefix) = before.strip_suffix("/Group") {
            return Some(Route {
                prefix,
                level: ExportLevel::Group,
                group_id: Some(id),
            });
        }
    }
    Some(Route {
        prefix: rest,
        level: ExportLevel::System,
        group_id: None,
    })
}

pub async fn handle(state: &AppState, req: Request) -> Response {
    let path = normalized_path(&req);
    if let Some(prefix) = metadata::route_prefix(&path) {
        if req.method() != Method::GET {
            return ApiError::MethodNotAllowed("metadata supports GET".into()).into_response();
        }
        let base = match base_url(&state.config, &req, prefix) {
            Ok(base) => base,
            Err(e) => return e.into_response(),
        };
        return json_response(
            StatusCode::OK,
            super::FHIR_JSON,
            metadata::capability_statement(&base, &state.config).to_string(),
        );
    }
    if let Some(id) = metadata::operation_definition_id(&path) {
        return match (
            req.method() == Method::GET,
            metadata::operation_definition(id),
        ) {
            (true, Some(def)) => json_response(StatusCode::OK, super::FHIR_JSON, def.to_string()),
            (false, _) => ApiError::MethodNotAllowed("OperationDefinition supports GET".into())
                .into_response(),
            (true, None) => {
                ApiError::NotFound(format!("OperationDefinition/{id} is not known")).into_response()
            }
        };
    }
    let Some(route) = parse_route(&path) else {
        return not_found_route(&req);
    };
    match kickoff(state, &req, &route).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn kickoff(state: &AppState, req: &Request, route: &Route<'_>) -> Result<Response, ApiError> {
    let post = req.method() == Method::POST;
    if !post && req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed(format!(
            "$export supports GET and POST, not {}",
            req.method()
        )));
    }
    let base = base_url(&state.config, req, route.prefix)?;
    let principal = crate::auth::authenticate(state, req, &base).await?;
    let prefs = params::check_headers(
        header_str(req, header::ACCEPT),
        header_str(req, header::HeaderName::from_static("prefer")),
    )
    .map_err(kickoff_error)?;
    let mut pairs = query_pairs(req);
    if post {
        if let Some(ct) = header_str(req, header::CONTENT_TYPE) {
            let media = ct.split(';').next().unwrap_or("").trim();
            if !matches!(media, "application/fhir+json" | "application/json") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "a POST kick-off body is a FHIR Parameters resource (application/fhir+json), not {media}"
                )));
            }
        }
        pairs.extend(params::parameters_body(req.body()).map_err(kickoff_error)?);
    }
    let mut params = params::parse_params(
        route.level,
        &pairs,
        &state.config.additional_resources,
        prefs.lenient,
    )
    .map_err(kickoff_error)?;
    if let Some(p) = &principal {
        restrict_to_scopes(&mut params, p, prefs.lenient)?;
    }
    if let Some(group_id) = route.group_id {
        if !is_fhir_id(group_id)
            || !resources::resource_exists(&state.pool, "Group", group_id).await?
        {
            return Err(ApiError::NotFound(format!("Group/{group_id} is not known")));
        }
    }
    if let Some(patients) = params.patients.take() {
        let unknown =
            resources::select_unknown_patients(&state.pool, &patients, route.group_id).await?;
        if !unknown.is_empty() {
            let what = match route.group_id {
                Some(g) => format!("not Patients in Group/{g}"),
                None => "not known Patients".to_string(),
            };
            let msg = format!("patient: {} {what}", unknown.join(", "));
            if !prefs.lenient {
                return Err(ApiError::BadRequest(msg));
            }
            params
                .ignored
                .push(format!("{msg} (ignored: Prefer handling=lenient)"));
        }
        let known: Vec<String> = patients
            .into_iter()
            .filter(|p| !unknown.contains(p))
            .collect();
        if known.is_empty() {
            return Err(ApiError::BadRequest(
                "patient: none of the patients can be exported".into(),
            ));
        }
        params.patients = Some(known);
    }
    let client_id = principal.as_ref().map(|p| p.client_id.as_str());
    let path = normalized_path(req);
    let route_path = path.get(route.prefix.len()..).unwrap_or_default();
    // For POST the IG's `request` is the kick-off URL without the body's parameters.
    let request_url = match req.uri().query() {
        Some(q) if !q.is_empty() => format!("{base}{route_path}?{q}"),
        _ => format!("{base}{route_path}"),
    };
    let limits = jobs::JobLimits {
        running: state.config.max_concurrent_exports,
        stored: state.config.max_stored_exports,
    };
    let new = jobs::NewJob {
        level: route.level,
        group_id: route.group_id,
        params: &params,
        request_url: &request_url,
        client_id,
    };
    let job = match jobs::insert_job(&state.pool, new, limits).await? {
        Ok(job) => {
            crate::metrics::export_started(job.level.as_str());
            job
        }
        Err(jobs::LimitReached::Running(n)) => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "{n} exports are already running for this client (limit {}); retry later or cancel one",
                    limits.running
                ),
                retry_after: 30,
            })
        }
        Err(jobs::LimitReached::Stored(n)) => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "this client has {n} exports whose files are kept (limit {}); DELETE the ones it no longer needs (their status URL) or wait until they expire",
                    limits.stored
                ),
                retry_after: 60,
            })
        }
    };
    tracing::info!(job_id = %job.id, level = route.level.as_str(), post, "export queued");
    if let Err(e) = state.queue.send(job.id).await {
        tracing::warn!(job_id = %job.id, error = %e, "wake-up not sent; the schedule will pick the job up");
    }
    let status_url = format!("{base}/$exportstatus?_id={}", job.id);
    let mut resp = outcome_response(
        StatusCode::ACCEPTED,
        &OperationOutcome::information(format!(
            "Export job {} accepted; poll {status_url}",
            job.id
        )),
    );
    resp.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_str(&status_url).map_err(|e| ApiError::Internal(Box::new(e)))?,
    );
    Ok(resp)
}

/// A token limited to some types: a `_type` outside them is refused (403), or with lenient
/// handling narrowed and reported; without `_type`, only its types are exported.
fn restrict_to_scopes(
    params: &mut params::ExportParams,
    principal: &crate::auth::Principal,
    lenient: bool,
) -> Result<(), ApiError> {
    let crate::auth::TypeSet::Only(allowed) = &principal.types else {
        return Ok(());
    };
    if let Some(types) = &mut params.types {
        let denied: Vec<String> = types
            .iter()
            .filter(|t| !allowed.contains(*t))
            .cloned()
            .collect();
        if !denied.is_empty() {
            let msg = format!(
                "_type: the access token's scopes do not cover {}",
                denied.join(", ")
            );
            if !lenient {
                return Err(ApiError::Forbidden(msg));
            }
            types.retain(|t| allowed.contains(t));
            params
                .ignored
                .push(format!("{msg} (ignored: Prefer handling=lenient)"));
            if types.is_empty() {
                return Err(ApiError::Forbidden(
                    "_type: the access token's scopes cover none of the requested types".into(),
                ));
            }
        }
    }
    params.allowed_types = Some(allowed.iter().cloned().collect());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recognised_at_every_level_and_under_a_prefix() {
        assert_eq!(
            parse_route("/$export"),
            Some(Route {
                prefix: "",
                level: ExportLevel::System,
                group_id: None
            })
        );
        assert_eq!(
            parse_route("/fhir/Patient/$export"),
            Some(Route {
                prefix: "/fhir",
                level: ExportLevel::Patient,
                group_id: None
            })
        );
        assert_eq!(
            parse_route("/fhir/Group/g-1/$export"),
            Some(Route {
                prefix: "/fhir",
                level: ExportLevel::Group,
                group_id: Some("g-1")
            })
        );
        assert_eq!(parse_route("/Patient"), None);
    }
}
