//! `POST [base]/auth/token` and `GET .well-known/smart-configuration` over HTTP: the protocol
//! (checking the client assertion, granting scopes) is crate::auth::token's; here the form is
//! read and the answer or OAuth error written (never cached).

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::{base_url, canonical_base, header_str, json_response, ApiError, Request, Response};
use crate::app::AppState;
use crate::auth::token::{self as protocol, OAuthError, TokenError};
use crate::config::Config;

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn oauth_error(e: OAuthError) -> Response {
    let body = json!({"error": e.code, "error_description": e.description});
    no_store(json_response(
        e.status(),
        "application/json",
        body.to_string(),
    ))
}

fn auth_off() -> ApiError {
    ApiError::NotFound(
        "authorization is off on this server (AUTH=off or serve --insecure): no token is needed"
            .into(),
    )
}

/// The token endpoint at `base`.
pub async fn token(state: &AppState, req: &Request, base: &str) -> Response {
    if !state.config.auth.is_on() {
        return auth_off().into_response();
    }
    let media = header_str(req, header::CONTENT_TYPE)
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if media != Some("application/x-www-form-urlencoded") {
        return oauth_error(OAuthError::new(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let form = match protocol::parse_form(req.body()) {
        Ok(form) => form,
        Err(e) => return oauth_error(e),
    };
    match protocol::grant(&state.pool, &state.config, &form, base).await {
        Ok(grant) => match serde_json::to_string(&grant) {
            Ok(body) => no_store(json_response(StatusCode::OK, "application/json", body)),
            Err(e) => ApiError::Internal(Box::new(e)).into_response(),
        },
        Err(TokenError::OAuth(e)) => oauth_error(e),
        Err(TokenError::Db(e)) => ApiError::from(e).into_response(),
        Err(e @ (TokenError::NoSigningKey | TokenError::Signing(_))) => {
            ApiError::Internal(Box::new(e)).into_response()
        }
    }
}

/// The base `.well-known/smart-configuration` is answered for: it is served at the base, at the
/// server root, and under `[base]/Patient` (smart-fetch takes `<base>/Patient` as its FHIR URL
/// for a Patient-level export and discovers there), and its content is always the canonical
/// base's. A 404 when authorization is off (there is nothing to discover) or when what precedes
/// the route (`prefix`) is none of those.
pub fn smart_configuration_base(
    config: &Config,
    req: &Request,
    prefix: &str,
) -> Result<String, ApiError> {
    if !config.auth.is_on() {
        return Err(auth_off());
    }
    let canonical = canonical_base(config, req).ok_or_else(|| {
        ApiError::Internal("no FHIR base URL is configured: set PUBLIC_BASE_URL".into())
    })?;
    match base_url(config, req, prefix) {
        Ok(base) => Ok(base),
        Err(_) if prefix.is_empty() => Ok(canonical),
        Err(e) => match prefix.strip_suffix("/Patient") {
            Some(p) if base_url(config, req, p).is_ok() => Ok(canonical),
            _ => Err(e),
        },
    }
}

/// smart-configuration at `base` ([`smart_configuration_base`]).
pub fn smart_configuration(base: &str) -> Response {
    json_response(
        StatusCode::OK,
        "application/json",
        protocol::smart_configuration(base).to_string(),
    )
}
