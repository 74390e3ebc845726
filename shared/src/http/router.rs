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

/// The route a request matches, as its pattern (ids left out), for the access log and metrics.
pub fn route_label(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    if crate::auth::token::is_route(path) {
        if path.ends_with("smart-configuration") {
            "/.well-known/smart-configuration"
        } else {
            "/auth/token"
        }
    } else if path.ends_with("/$exportstatus") {
        "/$exportstatus"
    } else if path.ends_with("/$exportfilerequest") {
        "/$exportfilerequest"
    } else if path.ends_with("/Patient/$export") {
        "/Patient/$export"
    } else if path.contains("/Group/") && path.ends_with("/$export") {
        "/Group/{id}/$export"
    } else if path.ends_with("/$export") {
        "/$export"
    } else if path.ends_with("/metadata") {
        "/metadata"
    } else if path.contains("/OperationDefinition/") {
        "/OperationDefinition/{id}"
    } else {
        "(no route)"
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn routes_are_labelled_by_pattern_never_by_id() {
        assert_eq!(
            route_label("/fhir/Group/g-123/$export"),
            "/Group/{id}/$export"
        );
        assert_eq!(route_label("/$export"), "/$export");
        assert_eq!(route_label("/Patient/$export"), "/Patient/$export");
        assert_eq!(route_label("/$exportstatus"), "/$exportstatus");
        assert_eq!(route_label("/auth/token"), "/auth/token");
        assert_eq!(
            route_label("/.well-known/smart-configuration"),
            "/.well-known/smart-configuration"
        );
        assert_eq!(route_label("/Patient/p1"), "(no route)");
    }
}
