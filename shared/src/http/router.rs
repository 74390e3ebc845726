//! All routes in one dispatcher, for `bulk-export serve` (each Lambda calls its own handler).

use super::{file, kickoff, normalized_path, status, AppState, Request, Response};

pub async fn handle(state: &AppState, req: Request) -> Response {
    let path = normalized_path(&req);
    if crate::auth::token::is_route(&path) {
        crate::auth::token::handle(state, req).await
    } else if path.ends_with("/$exportstatus") {
        status::handle(state, req).await
    } else if path.ends_with("/$exportfilerequest") {
        file::handle(state, req).await
    } else {
        // $export at every level, and /metadata
        kickoff::handle(state, req).await
    }
}
