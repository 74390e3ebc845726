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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// `/Group/{id}/$export`: literal segments and `{…}` for any one segment.
    pub pattern: String,
    pub function: Function,
}

/// What a request matches.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'a> {
    Route(&'a Route),
    /// The path is a route's, not the method: the function whose path it is (its handler
    /// answers: 405, or 404 when what precedes the route is not the base's path) and the
    /// methods the path has.
    MethodNotAllowed {
        function: Function,
        methods: Vec<Method>,
    },
    NotFound,
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
                // The declaration is compiled in and unit-tested: every route is `METHOD /path`.
                let (method, pattern) = route.split_once(' ').expect("METHOD /pattern");
                routes.push(Route {
                    method: method.parse().expect("an HTTP method"),
                    pattern: pattern.to_string(),
                    function,
                });
            }
        }
        routes
    })
}

/// How many trailing segments of `path` `pattern` matches (None: it does not).
fn match_len(pattern: &str, path: &str) -> Option<usize> {
    let want: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    let got: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if got.len() < want.len() + 1 {
        return None;
    }
    let tail = &got[got.len() - want.len()..];
    want.iter()
        .zip(tail)
        .all(|(w, g)| (w.starts_with('{') && !g.is_empty()) || w == g)
        .then_some(want.len())
}

/// The route of `method` and `path` (`%24` already read as `$`).
pub fn find(method: &Method, path: &str) -> Matched<'static> {
    let best = table()
        .iter()
        .filter_map(|r| match_len(&r.pattern, path).map(|n| (n, r)))
        .max_by_key(|(n, _)| *n);
    let Some((len, _)) = best else {
        return Matched::NotFound;
    };
    let same_path: Vec<&Route> = table()
        .iter()
        .filter(|r| match_len(&r.pattern, path) == Some(len))
        .collect();
    match same_path.iter().find(|r| r.method == method) {
        Some(r) => Matched::Route(r),
        None => Matched::MethodNotAllowed {
            function: same_path[0].function,
            methods: same_path.iter().map(|r| r.method.clone()).collect(),
        },
    }
}

/// The pattern of the route `path` is on (whatever the method), for logs and metrics.
pub fn label(path: &str) -> &'static str {
    table()
        .iter()
        .filter_map(|r| match_len(&r.pattern, path).map(|n| (n, r)))
        .max_by_key(|(n, _)| *n)
        .map_or("(no route)", |(_, r)| r.pattern.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_one_functions_and_parses() {
        let t = table();
        assert_eq!(t.len(), 13);
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
            Matched::Route(r) => Some((r.function, r.pattern.as_str())),
            _ => None,
        };
        assert_eq!(at("GET", "/$export"), Some((Function::Kickoff, "/$export")));
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
            at("GET", "/OperationDefinition/export"),
            Some((Function::Kickoff, "/OperationDefinition/{id}"))
        );
        assert_eq!(find(&Method::GET, "/Patient/p1"), Matched::NotFound);
        assert_eq!(
            find(&Method::PUT, "/$exportstatus"),
            Matched::MethodNotAllowed {
                function: Function::Status,
                methods: vec![Method::GET, Method::DELETE]
            }
        );
        assert_eq!(
            label("/fhir/Group/secret-id/$export"),
            "/Group/{id}/$export"
        );
        assert_eq!(label("/nothing/here"), "(no route)");
    }
}
