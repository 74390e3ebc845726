//! `serve`'s dispatcher: the route table (crate::http::routes) names the function of a request,
//! whose handler answers it, as that function's Lambda would.

use super::routes::{self, Matched};
use super::{file, kickoff, normalized_path, not_found_route, status, AppState};
use super::{Request, Response};
use crate::app::Function;
use http::header::{self, HeaderValue};
use http::StatusCode;

pub async fn handle(state: &AppState, req: Request) -> Response {
    let path = normalized_path(&req);
    match routes::find(req.method(), &path) {
        Matched::Route(route) => handle_as(route.function, state, req).await,
        // Its handler says 405 (or 404 when the path is not under the base).
        Matched::MethodNotAllowed { function, .. } => handle_as(function, state, req).await,
        Matched::NotFound => not_found_route(&req),
    }
}

/// The handler of `function` (its Lambda's entry point). A 405 says which methods the path has
/// (`Allow`, from the route table).
pub async fn handle_as(function: Function, state: &AppState, req: Request) -> Response {
    let allow = match routes::find(req.method(), &normalized_path(&req)) {
        Matched::MethodNotAllowed { methods, .. } => Some(methods),
        _ => None,
    };
    let mut resp = match function {
        Function::Kickoff => kickoff::handle(state, req).await,
        Function::Status => status::handle(state, req).await,
        Function::File => file::handle(state, req).await,
        Function::Token => crate::auth::token::handle(state, req).await,
        // Every route, by the table (which holds no route of the api function itself).
        Function::Api => Box::pin(handle(state, req)).await,
        Function::Exporter | Function::Migrate => not_found_route(&req),
    };
    if let (StatusCode::METHOD_NOT_ALLOWED, Some(methods)) = (resp.status(), allow) {
        let methods: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
    }
    resp
}
