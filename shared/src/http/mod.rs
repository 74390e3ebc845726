//! HTTP handlers over `http::Request<Bytes>`: the same code runs in the Lambdas (lambda_http),
//! under `sam local`/`cargo lambda watch`, and in `bulk-export serve`.
//!
//! This module is the one place where domain results and errors become HTTP responses.

pub mod file;
pub mod kickoff;
pub mod metadata;
pub mod router;
pub mod routes;
pub mod status;
pub mod token;
pub mod view_run;

use std::path::PathBuf;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use crate::config::{CancelledStatus, Config};
use crate::db::DbError;
use crate::fhir::OperationOutcome;
use crate::storage::StorageError;

pub type Request = http::Request<Bytes>;
pub type Response = http::Response<Body>;

pub const FHIR_JSON: &str = "application/fhir+json";

/// A response body: bytes, or a local file the host streams (gzip-compressed on the way out
/// when the client accepted it).
#[derive(Debug)]
pub enum Body {
    Full(Bytes),
    File { path: PathBuf, gzip: bool },
}

/// Opens a local file as a byte stream, compressed with gzip when asked: at the fastest level,
/// like the S3 gzip copies (about 6× smaller for FHIR ndjson at a fraction of the CPU of the
/// default level, which made the download, not the network, the bottleneck; docs/BENCHMARKS.md).
pub async fn file_reader(
    path: &std::path::Path,
    gzip: bool,
) -> std::io::Result<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>> {
    let file = tokio::io::BufReader::with_capacity(64 * 1024, tokio::fs::File::open(path).await?);
    Ok(if gzip {
        Box::pin(
            async_compression::tokio::bufread::GzipEncoder::with_quality(
                file,
                async_compression::Level::Fastest,
            ),
        )
    } else {
        Box::pin(file)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// No or a bad bearer token: 401 with WWW-Authenticate.
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// A token was sent but is not valid (`error="invalid_token"`).
        invalid_token: bool,
    },
    /// A valid token whose scopes do not cover the request.
    #[error("{0}")]
    Forbidden(String),
    /// A request over a size limit: 413, 414 or 431.
    #[error("{1}")]
    TooLarge(StatusCode, String),
    /// A request that did not arrive in time: 408.
    #[error("{0}")]
    Timeout(String),
    /// An answer larger than AWS Lambda lets a function return (6 MB): said, never attempted.
    #[error("{0}")]
    OverLambdaLimit(String),
    /// A well-formed request that cannot be carried out on this data (a view that fails on a
    /// resource): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// A request that would take longer than a synchronous answer may: 422, with what to do.
    #[error("{0}")]
    TooCostly(String),
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Pool(_) => ApiError::Unavailable(Box::new(e)),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound { key } => ApiError::NotFound(format!("file {key} not found")),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing => ApiError::Unauthorized {
                message: e.to_string(),
                invalid_token: false,
            },
            AuthError::InvalidToken(message) => ApiError::Unauthorized {
                message,
                invalid_token: true,
            },
            AuthError::Db(e) => e.into(),
            AuthError::NoSigningKey => ApiError::Internal(Box::new(e)),
        }
    }
}

/// The one place where the service layer's refusals become HTTP statuses.
impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as S;
        match e {
            S::Invalid(m) => ApiError::BadRequest(m),
            S::Forbidden(m) => ApiError::Forbidden(m),
            S::NotFound(m) => ApiError::NotFound(m),
            S::Cancelled { message, answer } => match answer {
                CancelledStatus::NotFound => ApiError::NotFound(message),
                CancelledStatus::Gone => ApiError::Gone(message),
            },
            S::TooManyRequests {
                message,
                retry_after,
            } => ApiError::TooManyRequests {
                message,
                retry_after,
            },
            S::Db(e) => e.into(),
            S::Storage(e) => e.into(),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::NotSupported(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(status, _) => *status,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::OverLambdaLimit(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unprocessable(_) | ApiError::TooCostly(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn issue_code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid",
            ApiError::NotSupported(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::UnsupportedMediaType(_) => "not-supported",
            ApiError::NotAcceptable(_) => "not-supported",
            ApiError::NotFound(_) | ApiError::Gone(_) => "not-found",
            ApiError::Unavailable(_) => "transient",
            ApiError::TooManyRequests { .. } => "throttled",
            ApiError::Unauthorized { .. } => "login",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooLarge(..) => "too-long",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "exception",
            ApiError::OverLambdaLimit(_) | ApiError::TooCostly(_) => "too-costly",
            ApiError::Unprocessable(_) => "processing",
        }
    }

    /// The response: an OperationOutcome with a safe message; the full chain is logged once.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ApiError::Unavailable(_) => Some(5),
            _ => None,
        };
        let www_authenticate = match &self {
            ApiError::Unauthorized {
                invalid_token: true,
                message,
            } => Some(format!(
                "Bearer realm=\"fhir-bulk-export\", error=\"invalid_token\", error_description=\"{}\"",
                message.replace(['"', '\\'], "'")
            )),
            ApiError::Unauthorized { .. } => Some("Bearer realm=\"fhir-bulk-export\"".to_string()),
            _ => None,
        };
        if status.is_server_error() {
            let chain = crate::error_chain(&self);
            tracing::error!(status = status.as_u16(), error = %chain, "request failed");
        }
        let mut resp = outcome_response(
            status,
            &OperationOutcome::error(self.issue_code(), self.to_string()),
        );
        if let Some(seconds) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = www_authenticate {
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

pub fn json_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = http::Response::new(Body::Full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn outcome_response(status: StatusCode, outcome: &OperationOutcome) -> Response {
    json_response(status, FHIR_JSON, outcome.to_json())
}

/// Query pairs, percent-decoded.
pub fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub fn query_param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

pub fn header_str(req: &Request, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The request path with `%24` decoded to `$` (some clients encode it).
pub fn normalized_path(req: &Request) -> String {
    req.uri().path().replace("%24", "$")
}

/// The FHIR base URL of this deployment, never taken from what a request says about itself:
/// `PUBLIC_BASE_URL` (`serve` sets it from its bind address when unset); else, with
/// `TRUST_FORWARDED_HEADERS=true` (behind a proxy that sets them), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`; else in Lambda the domain API Gateway reports in the request context
/// (set by API Gateway from the endpoint that was called, not by the client). None: no base
/// can be known (a Lambda invoked without a request context and without PUBLIC_BASE_URL).
pub fn canonical_base(config: &Config, req: &Request) -> Option<String> {
    if let Some(base) = &config.public_base_url {
        return Some(base.clone());
    }
    if config.trust_forwarded_headers {
        let proto = header_str(req, header::HeaderName::from_static("x-forwarded-proto"))
            .and_then(|s| s.split(',').next())
            .map(str::trim)
            .filter(|p| matches!(*p, "http" | "https"));
        let host = header_str(req, header::HeaderName::from_static("x-forwarded-host"))
            .and_then(|s| s.split(',').next())
            .map(str::trim)
            .filter(|h| is_host(h));
        if let (Some(proto), Some(host)) = (proto, host) {
            return Some(format!("{proto}://{host}"));
        }
    }
    lambda_base(req)
}

/// `https://{domain}` (plus `/{stage}` for a REST API stage) from API Gateway's request context.
fn lambda_base(req: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    match req.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => {
            let domain = ctx.domain_name.as_deref().filter(|d| is_host(d))?;
            Some(format!("https://{domain}"))
        }
        RequestContext::ApiGatewayV1(ctx) => {
            let domain = ctx.domain_name.as_deref().filter(|d| is_host(d))?;
            match ctx.stage.as_deref() {
                Some(stage) if stage != "$default" && !stage.is_empty() && is_host(stage) => {
                    Some(format!("https://{domain}/{stage}"))
                }
                _ => Some(format!("https://{domain}")),
            }
        }
        _ => None,
    }
}

/// A host name (or host:port): letters, digits, `.`, `-`, `:` and `[`/`]` only.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// The path of the canonical base (`""` for a base at the root, else `/fhir` …).
pub(crate) fn base_path(base: &str) -> &str {
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map_or("", |i| after_scheme[i..].trim_end_matches('/'))
}

/// The FHIR base for a request whose route starts after `prefix` (the path before the route):
/// the canonical base when `prefix` is its path, else a 404 (routes exist only under the
/// configured base: `/anything/$export` is no base of ours).
pub fn base_url(config: &Config, req: &Request, prefix: &str) -> Result<String, ApiError> {
    let no_route = || {
        ApiError::NotFound(format!(
            "no route for {} {}",
            req.method(),
            req.uri().path()
        ))
    };
    let base = canonical_base(config, req).ok_or_else(|| {
        ApiError::Internal("no FHIR base URL is configured: set PUBLIC_BASE_URL".into())
    })?;
    if prefix.trim_end_matches('/') != base_path(&base) {
        return Err(no_route());
    }
    Ok(base)
}

/// Largest request body accepted (kick-off `Parameters` and token forms are small).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest request target (path and query).
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Largest header section, and largest single header value.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;

/// Size limits every adapter applies before any handler sees the request: 413 for a large
/// body, 414 for a long URI, 431 for large headers (None: the request is within them).
pub fn check_limits(req: &Request) -> Option<ApiError> {
    let too = |status, msg: String| Some(ApiError::TooLarge(status, msg));
    if req.body().len() > MAX_BODY_BYTES {
        return too(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let uri_len = req.uri().path().len() + req.uri().query().map_or(0, str::len);
    if uri_len > MAX_URI_BYTES {
        return too(
            StatusCode::URI_TOO_LONG,
            format!("request URI longer than {MAX_URI_BYTES} bytes"),
        );
    }
    let mut total = 0;
    for (name, value) in req.headers() {
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return too(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("header {name} is larger than {MAX_HEADER_VALUE_BYTES} bytes"),
            );
        }
        total += name.as_str().len() + value.len();
    }
    if total > MAX_HEADER_BYTES {
        return too(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request headers larger than {MAX_HEADER_BYTES} bytes"),
        );
    }
    None
}

pub fn not_found_route(req: &Request) -> Response {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}

#[cfg(test)]
mod tests;
