//! FHIR search queries evaluated against resources, for `_typeFilter`.
//!
//! A query is `Type?name[:modifier]=value[,value]&…`: parameters are AND'd, comma-separated
//! values OR'd, and several queries for one type OR'd. Parameters and their element paths come
//! from the official R4 SearchParameter definitions (`search_table.rs`); the parameter types
//! token, reference, date, string, quantity, uri and number are evaluated, with the modifiers
//! `:missing` (all), `:not` and `:text` (token), `:exact` and `:contains` (string), `:below`
//! and `:above` (uri) and `:[Type]` (reference). Anything else is refused with a message that
//! says why, never silently ignored.

mod matcher;
mod path;
mod syntax;
mod value;

use serde_json::Value;

pub use syntax::parse_query;
use syntax::Criterion;

/// One parsed `_typeFilter` query.
#[derive(Debug, Clone)]
pub struct Query {
    pub resource_type: String,
    criteria: Vec<Criterion>,
}

impl Query {
    /// True when the resource matches every parameter of the query.
    pub fn matches(&self, resource: &Value) -> bool {
        self.criteria.iter().all(|c| c.matches(resource))
    }
}

/// A `_typeFilter` query this server cannot read, or asks for what it does not support; the
/// message says which part, for the client (a 400, or an ignored filter with lenient handling).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SearchError(pub String);

impl From<String> for SearchError {
    fn from(message: String) -> Self {
        SearchError(message)
    }
}

impl From<&str> for SearchError {
    fn from(message: &str) -> Self {
        SearchError(message.to_string())
    }
}

/// The `_typeFilter` queries of an export, grouped by type: a resource of a type with queries is
/// exported when any of them matches.
#[derive(Debug, Clone, Default)]
pub struct TypeFilters {
    queries: Vec<Query>,
}

impl TypeFilters {
    /// Parses every query (each a `Type?query` string as given in `_typeFilter`).
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, SearchError> {
        let queries = texts
            .iter()
            .map(|t| parse_query(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TypeFilters { queries })
    }

    /// The queries for one type (empty: no filter).
    pub fn for_type(&self, resource_type: &str) -> Vec<Query> {
        self.queries
            .iter()
            .filter(|q| q.resource_type == resource_type)
            .cloned()
            .collect()
    }
}

/// True when `resource` matches any of `queries` (or there are none).
pub fn matches_any(queries: &[Query], resource: &Value) -> bool {
    queries.is_empty() || queries.iter().any(|q| q.matches(resource))
}

#[cfg(test)]
mod tests;
