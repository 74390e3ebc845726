//! `serve`'s dispatcher: the route table (crate::http::routes) names the function of a request,
//! whose handler answers it, as that function's Lambda would.

use super::routes::{self, Matched};
use super::{file, kickoff, normalized_path, not_found_route, status, AppState};
use super::{Request, Response};
use crate::app::Function;

pub async fn handle(state: &AppState, req: Request) -> Response {
    let path = normalized_path(&req);
    match routes::find(req.method(), &path) {
        Matched::Route(route) => handle_as(route.function, state, req).await,
        // Its handler says 405 (or 404 when the path is not under the base).
        Matched::MethodNotAllowed { function, .. } => handle_as(function, state, req).await,
        Matched::NotFound => not_found_route(&req),
    }
}

/// The handler of `function` (its Lambda's entry point).
pub async fn handle_as(function: Function, state: &AppState, req: Request) -> Response {
    match function {
        Function::Kickoff => kickoff::handle(state, req).await,
        Function::Status => status::handle(state, req).await,
        Function::File => file::handle(state, req).await,
        Function::Token => crate::auth::token::handle(state, req).await,
        Function::Exporter | Function::Migrate => not_found_route(&req),
    }
}
