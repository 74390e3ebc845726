//! The dispatcher of `serve` and of every Lambda function: the route table
//! (crate::http::routes) names a request's handler and function; what every handler needs first
//! is done here once, from the request's head ([`route`]) — the path normalised, the FHIR base
//! (the path before the route must be the base's), the access token where the route needs one —
//! and the handler gets them with the route's `{id}` ([`Routed::answer`]). `serve` reads a body
//! in between, within what the route and its client may send.

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};

use super::routes::{self, At, Handler, Matched};
use super::{
    base_url, file, header_str, json_response, kickoff, metadata, normalized_path, not_found_route,
    status, token, ApiError, Request, Response, FHIR_JSON,
};
use crate::app::{AppState, Function};
use crate::auth::AuthError;
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
    let path = normalized_path(&req);
    route(function, state, &req, &path)
        .await
        .answer(state, &req)
        .await
}

/// A request's route, found from its head: its handler with what the handler is given, or the
/// answer given without one (no route, another method, another base, no valid token).
pub struct Routed {
    /// The handler of the route matched (None: no route, or only its path matched).
    pub handler: Option<Handler>,
    /// The client of a verified access token, also when the request is refused because the
    /// client is no longer registered: the access log's (the token is verified here only).
    pub client_id: Option<String>,
    outcome: Outcome,
}

enum Outcome {
    Handle(Handler, Ctx),
    Answer(Response),
}

impl Routed {
    fn answered(handler: Option<Handler>, resp: Response) -> Routed {
        Routed {
            handler,
            client_id: None,
            outcome: Outcome::Answer(resp),
        }
    }

    /// Whether it is answered without its handler (the body need not be read for it).
    pub fn is_answered(&self) -> bool {
        matches!(self.outcome, Outcome::Answer(_))
    }

    /// The answer to `req` (the request whose head was routed, now with its body).
    pub async fn answer(self, state: &AppState, req: &Request) -> Response {
        match self.outcome {
            Outcome::Answer(resp) => resp,
            Outcome::Handle(handler, ctx) => dispatch(handler, state, req, &ctx)
                .await
                .unwrap_or_else(ApiError::into_response),
        }
    }
}

/// Routes `req` (its head: the body is not looked at) on `path`, the request's path normalised
/// once ([`normalized_path`]), as `function` answers it.
pub async fn route(function: Function, state: &AppState, req: &Request, path: &str) -> Routed {
    let matched = routes::find(req.method(), path);
    if !answers(function, &matched) {
        return Routed::answered(None, not_found_route(req));
    }
    match matched {
        Matched::Route(route, at) => prepare(route.handler, state, req, path, at).await,
        Matched::MethodNotAllowed { methods, at, .. } => Routed::answered(
            None,
            match base_url(&state.config, req, &at.prefix) {
                Ok(_) => method_not_allowed(req, path, &methods),
                Err(e) => e.into_response(),
            },
        ),
        Matched::NotFound => Routed::answered(None, not_found_route(req)),
    }
}

/// Whether `function` answers what matched: its own routes; the api function every route.
pub fn answers(function: Function, matched: &Matched<'_>) -> bool {
    matched
        .function()
        .is_some_and(|f| f == function || function == Function::Api)
}

fn method_not_allowed(req: &Request, path: &str, methods: &[Method]) -> Response {
    let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let mut resp = ApiError::MethodNotAllowed(format!(
        "{} supports {}, not {}",
        routes::label(path),
        allow.join(" and "),
        req.method()
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// What `handler` is given: the base (or a 404 when the path before the route is not the
/// base's) and the client of a valid access token where the route needs one (or a 401).
async fn prepare(handler: Handler, state: &AppState, req: &Request, path: &str, at: At) -> Routed {
    let base = match handler {
        // Served at the base, at the server root and under `[base]/Patient`.
        Handler::SmartConfiguration => {
            token::smart_configuration_base(&state.config, req, &at.prefix)
        }
        _ => base_url(&state.config, req, &at.prefix),
    };
    let base = match base {
        Ok(base) => base,
        Err(e) => return Routed::answered(Some(handler), e.into_response()),
    };
    let mut client_id = None;
    let principal = if handler.authenticated() {
        match authenticate(state, req, &base, &mut client_id).await {
            Ok(principal) => principal,
            Err(e) => {
                return Routed {
                    client_id,
                    ..Routed::answered(Some(handler), ApiError::from(e).into_response())
                }
            }
        }
    } else {
        None
    };
    let ctx = Ctx {
        route_path: path.get(at.prefix.len()..).unwrap_or_default().to_string(),
        base,
        principal,
        id: at.id,
    };
    Routed {
        handler: Some(handler),
        client_id,
        outcome: Outcome::Handle(handler, ctx),
    }
}

/// The request's principal when authorization is on (None when off); `client_id` is set as
/// soon as the token is verified, before the client's registration is looked up.
async fn authenticate(
    state: &AppState,
    req: &Request,
    base: &str,
    client_id: &mut Option<String>,
) -> Result<Option<Principal>, AuthError> {
    let authorization = header_str(req, header::AUTHORIZATION);
    let Some(principal) = crate::auth::verify(&state.config, authorization, base)? else {
        return Ok(None);
    };
    *client_id = Some(principal.client_id.clone());
    crate::auth::check_registered(&state.pool, &principal).await?;
    Ok(Some(principal))
}

async fn dispatch(
    handler: Handler,
    state: &AppState,
    req: &Request,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    match handler {
        Handler::Export(level) => kickoff::kickoff(state, req, ctx, level).await,
        Handler::ViewExport => kickoff::view_kickoff(state, req, ctx).await,
        Handler::ViewRun => crate::http::view_run::run(state, req, ctx).await,
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
        Handler::Status => status::status(state, req, ctx).await,
        Handler::Cancel => status::cancel(state, req, ctx).await,
        Handler::File => file::download(state, req, ctx).await,
        Handler::Token => Ok(token::token(state, req, &ctx.base).await),
        Handler::SmartConfiguration => Ok(token::smart_configuration(&ctx.base)),
    }
}
