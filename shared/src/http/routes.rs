//! The route table: every HTTP route, the function that answers it, from `infra/functions.json`
//! (the same declaration template.yaml's HttpApi events are checked against). `serve` dispatches
//! with it, each Lambda function refuses what is not its own, and the access log and metrics name
//! a request by its route pattern, never by the ids in its path.
//!
//! A pattern matches the end of a path: what comes before it is the FHIR base's own path
//! (`PUBLIC_BASE_URL=https://host/fhir` → `/fhir/$export`), which the handlers check. The longest
//! pattern that matches wins (`/Group/{id}/$export` over `/$export`).

use std::sync::OnceLock;

use http::Method;

use crate::app::Function;
use crate::export::ExportLevel;

/// What answers a route: each is one function of `http` (dispatched by `router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `$export` at a level (GET, or POST with a Parameters body).
    Export(ExportLevel),
    /// The CapabilityStatement.
    Metadata,
    /// `OperationDefinition/{id}`.
    OperationDefinition,
    /// `GET $exportstatus`.
    Status,
    /// `DELETE $exportstatus`.
    Cancel,
    /// `GET $exportfilerequest`.
    File,
    /// `POST auth/token`.
    Token,
    /// `.well-known/smart-configuration`.
    SmartConfiguration,
    /// `POST $viewdefinition-export` (SQL on FHIR): a view export's kick-off.
    ViewExport,
    /// `POST $viewdefinition-run` (SQL on FHIR): a view's rows, at once.
    ViewRun,
}

impl Handler {
    /// The handler of a declared route (infra/functions.json): every one has one (unit-tested).
    fn of(method: &Method, pattern: &str) -> Option<Handler> {
        Some(match (pattern, method.as_str()) {
            ("/$export", _) => Handler::Export(ExportLevel::System),
            ("/Patient/$export", _) => Handler::Export(ExportLevel::Patient),
            ("/Group/{id}/$export", _) => Handler::Export(ExportLevel::Group),
            // Also under `[base]/Patient`, for clients that take it as their FHIR URL for a
            // Patient-level export (smart-fetch reads its CapabilityStatement there).
            ("/metadata" | "/Patient/metadata", _) => Handler::Metadata,
            ("/OperationDefinition/{id}", _) => Handler::OperationDefinition,
            ("/$viewdefinition-export" | "/ViewDefinition/$viewdefinition-export", _) => {
                Handler::ViewExport
            }
            ("/$viewdefinition-run" | "/ViewDefinition/$viewdefinition-run", _) => Handler::ViewRun,
            ("/$exportstatus", "DELETE") => Handler::Cancel,
            ("/$exportstatus", _) => Handler::Status,
            ("/$exportfilerequest", _) => Handler::File,
            ("/auth/token", _) => Handler::Token,
            // Also under `[base]/Patient`, for clients (smart-fetch) that take it as their FHIR
            // URL: a route of its own, since API Gateway matches whole paths.
            (
                "/.well-known/smart-configuration" | "/Patient/.well-known/smart-configuration",
                _,
            ) => Handler::SmartConfiguration,
            _ => return None,
        })
    }

    /// Whether it needs a valid access token when authorization is on.
    pub fn authenticated(self) -> bool {
        matches!(
            self,
            Handler::Export(_)
                | Handler::Status
                | Handler::Cancel
                | Handler::File
                | Handler::ViewExport
                | Handler::ViewRun
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// `/Group/{id}/$export`: literal segments and `{…}` for any one segment.
    pub pattern: String,
    pub function: Function,
    pub handler: Handler,
}

/// Where in the path a route matched: what precedes the pattern (the FHIR base's own path, which
/// the router checks) and the `{id}` segment, if the pattern has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub prefix: String,
    pub id: Option<String>,
}

/// What a request matches.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'a> {
    Route(&'a Route, At),
    /// The path is a route's, not the method: the function whose path it is and the methods the
    /// path has (a 405, or a 404 when what precedes the route is not the base's path).
    MethodNotAllowed {
        function: Function,
        methods: Vec<Method>,
        at: At,
    },
    NotFound,
}

impl Matched<'_> {
    /// The function whose route (or path) it is.
    pub fn function(&self) -> Option<Function> {
        match self {
            Matched::Route(route, _) => Some(route.function),
            Matched::MethodNotAllowed { function, .. } => Some(*function),
            Matched::NotFound => None,
        }
    }
}

/// Every route of every function.
pub fn table() -> &'static [Route] {
    static TABLE: OnceLock<Vec<Route>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut routes = Vec::new();
        // A function that serves others (api) answers their routes: its own are REST API events.
        for function in Function::ALL
            .into_iter()
            .filter(|f| f.spec().serves.is_empty())
        {
            for route in &function.spec().routes {
                // The declaration is compiled in and unit-tested: every route is `METHOD /path`
                // with a handler.
                let (method, pattern) = route.split_once(' ').expect("METHOD /pattern");
                let method: Method = method.parse().expect("an HTTP method");
                routes.push(Route {
                    handler: Handler::of(&method, pattern).expect("a handler for every route"),
                    method,
                    pattern: pattern.to_string(),
                    function,
                });
            }
        }
        routes
    })
}

/// A path's segments (a trailing `/` ignored), split once for every route it is matched against.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').collect()
}

/// Where `pattern` matches the end of the path of segments `got` (None: it does not), and how
/// many segments it has.
fn match_at(pattern: &str, got: &[&str]) -> Option<(usize, At)> {
    let want: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    if got.len() < want.len() + 1 {
        return None;
    }
    let split = got.len() - want.len();
    let tail = &got[split..];
    let mut id = None;
    for (w, g) in want.iter().zip(tail) {
        if w.starts_with('{') && !g.is_empty() {
            id = Some(g.to_string());
        } else if w != g {
            return None;
        }
    }
    let prefix = got[..split].join("/");
    Some((want.len(), At { prefix, id }))
}

/// The route of `method` and `path` (`%24` already read as `$`).
pub fn find(method: &Method, path: &str) -> Matched<'static> {
    let got = segments(path);
    let matches: Vec<(usize, At, &Route)> = table()
        .iter()
        .filter_map(|r| match_at(&r.pattern, &got).map(|(n, at)| (n, at, r)))
        .collect();
    let Some(longest) = matches.iter().map(|(n, _, _)| *n).max() else {
        return Matched::NotFound;
    };
    let mut same_path = matches.into_iter().filter(|(n, _, _)| *n == longest);
    let first = same_path.next().expect("the longest is among them");
    let mut methods = vec![first.2.method.clone()];
    if first.2.method == method {
        return Matched::Route(first.2, first.1);
    }
    for (_, at, route) in same_path {
        if route.method == method {
            return Matched::Route(route, at);
        }
        methods.push(route.method.clone());
    }
    Matched::MethodNotAllowed {
        function: first.2.function,
        methods,
        at: first.1,
    }
}

/// The pattern of the route `path` is on (whatever the method), for logs and metrics.
pub fn label(path: &str) -> &'static str {
    let got = segments(path);
    table()
        .iter()
        .filter_map(|r| match_at(&r.pattern, &got).map(|(n, _)| (n, r)))
        .max_by_key(|(n, _)| *n)
        .map_or("(no route)", |(_, r)| r.pattern.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_one_functions_and_parses() {
        let t = table();
        assert_eq!(t.len(), 19);
        for (i, a) in t.iter().enumerate() {
            assert!(a.pattern.starts_with('/'), "{a:?}");
            for b in &t[i + 1..] {
                assert!(
                    !(a.method == b.method && a.pattern == b.pattern),
                    "{a:?} twice"
                );
            }
        }
    }

    #[test]
    fn the_longest_pattern_wins_under_any_base_path() {
        let at = |m: &str, p: &str| match find(&m.parse().unwrap(), p) {
            Matched::Route(r, _) => Some((r.function, r.pattern.as_str())),
            _ => None,
        };
        assert_eq!(at("GET", "/$export"), Some((Function::Kickoff, "/$export")));
        assert_eq!(
            at("POST", "/fhir/ViewDefinition/$viewdefinition-export"),
            Some((Function::Kickoff, "/ViewDefinition/$viewdefinition-export"))
        );
        assert_eq!(
            at("POST", "/fhir/$viewdefinition-run"),
            Some((Function::Kickoff, "/$viewdefinition-run"))
        );
        assert_eq!(
            at("POST", "/fhir/r4/$export"),
            Some((Function::Kickoff, "/$export"))
        );
        assert_eq!(
            at("GET", "/Group/g-1/$export"),
            Some((Function::Kickoff, "/Group/{id}/$export"))
        );
        assert_eq!(
            at("GET", "/fhir/Patient/$export"),
            Some((Function::Kickoff, "/Patient/$export"))
        );
        assert_eq!(
            at("DELETE", "/$exportstatus"),
            Some((Function::Status, "/$exportstatus"))
        );
        assert_eq!(
            at("GET", "/$exportfilerequest"),
            Some((Function::File, "/$exportfilerequest"))
        );
        assert_eq!(
            at("POST", "/auth/token"),
            Some((Function::Token, "/auth/token"))
        );
        assert_eq!(
            at("GET", "/fhir/.well-known/smart-configuration"),
            Some((Function::Token, "/.well-known/smart-configuration"))
        );
        assert_eq!(
            at("GET", "/fhir/Patient/metadata"),
            Some((Function::Kickoff, "/Patient/metadata"))
        );
        assert_eq!(
            at("GET", "/fhir/Patient/.well-known/smart-configuration"),
            Some((Function::Token, "/Patient/.well-known/smart-configuration"))
        );
        assert_eq!(
            at("GET", "/OperationDefinition/export"),
            Some((Function::Kickoff, "/OperationDefinition/{id}"))
        );
        assert_eq!(find(&Method::GET, "/Patient/p1"), Matched::NotFound);
        assert_eq!(
            find(&Method::PUT, "/fhir/$exportstatus"),
            Matched::MethodNotAllowed {
                function: Function::Status,
                methods: vec![Method::GET, Method::DELETE],
                at: At {
                    prefix: "/fhir".into(),
                    id: None
                }
            }
        );
        // What the handler is told: the base's path and the id.
        let Matched::Route(route, at) = find(&Method::POST, "/fhir/Group/g-1/$export") else {
            panic!("a route")
        };
        assert_eq!(route.handler, Handler::Export(ExportLevel::Group));
        assert_eq!(
            at,
            At {
                prefix: "/fhir".into(),
                id: Some("g-1".into())
            }
        );
        let Matched::Route(route, at) = find(&Method::DELETE, "/$exportstatus") else {
            panic!("a route")
        };
        assert_eq!((route.handler, at.prefix.as_str()), (Handler::Cancel, ""));
        assert_eq!(
            label("/fhir/Group/secret-id/$export"),
            "/Group/{id}/$export"
        );
        assert_eq!(label("/nothing/here"), "(no route)");
    }
}
