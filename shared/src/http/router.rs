//! The dispatcher of `serve` and of every Lambda function: the route table
//! (crate::http::routes) names a request's handler and function; what every handler needs first
//! is done here once — the FHIR base (the path before the route must be the base's), the access
//! token where the route needs one — and the handler gets both with the route's `{id}`.

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};

use super::routes::{self, At, Handler, Matched};
use super::{
    base_url, file, header_str, json_response, kickoff, metadata, normalized_path, not_found_route,
    status, token, ApiError, Request, Response, FHIR_JSON,
};
use crate::app::{AppState, Function};
use crate::auth::Principal;

/// What a handler is given besides the request.
pub struct Ctx {
    /// The FHIR base URL (from configuration or API Gateway, never from the request).
    pub base: String,
    /// The client, when the route needs a token and authorization is on.
    pub principal: Option<Principal>,
    /// The route's `{id}` segment.
    pub id: Option<String>,
    /// The path after the base's (`/Group/g-1/$export`).
    pub route_path: String,
}

impl Ctx {
    pub fn client_id(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.client_id.as_str())
    }
}

/// Every route (`serve`, and the api function behind the REST API).
pub async fn handle(state: &AppState, req: Request) -> Response {
    handle_as(Function::Api, state, req).await
}

/// The routes of `function` (its Lambda's entry point): another function's route is a 404, as
/// is a path that is no route; a route's path with another method is a 405 that says which
/// methods it has (`Allow`).
pub async fn handle_as(function: Function, state: &AppState, req: Request) -> Response {
    let matched = routes::find(req.method(), &normalized_path(&req));
    if !answers(function, &matched) {
        return not_found_route(&req);
    }
    match matched {
        Matched::Route(route, at) => dispatch(route.handler, state, &req, at)
            .await
            .unwrap_or_else(ApiError::into_response),
        Matched::MethodNotAllowed { methods, at, .. } => {
            match base_url(&state.config, &req, &at.prefix) {
                Ok(_) => method_not_allowed(&req, &methods),
                Err(e) => e.into_response(),
            }
        }
        Matched::NotFound => not_found_route(&req),
    }
}

/// Whether `function` answers what matched: its own routes; the api function every route.
pub fn answers(function: Function, matched: &Matched<'_>) -> bool {
    matched
        .function()
        .is_some_and(|f| f == function || function == Function::Api)
}

fn method_not_allowed(req: &Request, methods: &[Method]) -> Response {
    let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let mut resp = ApiError::MethodNotAllowed(format!(
        "{} supports {}, not {}",
        routes::label(&normalized_path(req)),
        allow.join(" and "),
        req.method()
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

async fn dispatch(
    handler: Handler,
    state: &AppState,
    req: &Request,
    at: At,
) -> Result<Response, ApiError> {
    // Served at the base, at the server root and under `[base]/Patient`: its own base rules.
    if handler == Handler::SmartConfiguration {
        return token::smart_configuration(state, req, &at.prefix);
    }
    let base = base_url(&state.config, req, &at.prefix)?;
    let principal = if handler.authenticated() {
        let authorization = header_str(req, header::AUTHORIZATION);
        crate::auth::authenticate(&state.pool, &state.config, authorization, &base).await?
    } else {
        None
    };
    let prefix = at.prefix;
    let path = normalized_path(req);
    let ctx = Ctx {
        base,
        principal,
        id: at.id,
        route_path: path.get(prefix.len()..).unwrap_or_default().to_string(),
    };
    match handler {
        Handler::Export(level) => kickoff::kickoff(state, req, &ctx, level).await,
        Handler::ViewExport => kickoff::view_kickoff(state, req, &ctx).await,
        Handler::ViewRun => crate::http::view_run::run(state, req, &ctx).await,
        Handler::Metadata => Ok(json_response(
            StatusCode::OK,
            FHIR_JSON,
            metadata::capability_statement(&ctx.base, &state.config).to_string(),
        )),
        Handler::OperationDefinition => {
            let id = ctx.id.as_deref().unwrap_or_default();
            let def = metadata::operation_definition(id).ok_or_else(|| {
                ApiError::NotFound(format!("OperationDefinition/{id} is not known"))
            })?;
            Ok(json_response(StatusCode::OK, FHIR_JSON, def.to_string()))
        }
        Handler::Status => status::status(state, req, &ctx).await,
        Handler::Cancel => status::cancel(state, req, &ctx).await,
        Handler::File => file::download(state, req, &ctx).await,
        Handler::Token => Ok(token::token(state, req, &ctx.base).await),
        Handler::SmartConfiguration => token::smart_configuration(state, req, &prefix),
    }
}
