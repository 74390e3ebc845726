//! Query syntax: `Type?name[:modifier]=value[,value]&…` into criteria (parameters from the
//! generated R4 table), with FHIR search escaping.

use super::value::parse_value;
use super::Query;
use super::SearchError;
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::search_types::{search_param, SearchParamDef, SearchParamKind};

/// Search result parameters a `_typeFilter` must not use (IG: `_include` and `_sort` are errors).
pub(super) const RESULT_PARAMETERS: &[&str] = &[
    "_include",
    "_revinclude",
    "_sort",
    "_count",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
];

#[derive(Debug, Clone)]
pub(super) struct Criterion {
    pub(super) def: &'static SearchParamDef,
    pub(super) modifier: Modifier,
    /// OR'd.
    pub(super) values: Vec<SearchValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Modifier {
    None,
    Missing(bool),
    Not,
    Text,
    Exact,
    Contains,
    Below,
    Above,
    Type(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone)]
pub(super) enum SearchValue {
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    Text(String),
    Reference(String),
    Uri(String),
    Date(Prefix, Range),
    Number(Prefix, Decimal),
    Quantity {
        prefix: Prefix,
        number: Decimal,
        system: Option<String>,
        code: Option<String>,
    },
    None,
}

/// A half-open interval of milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Range {
    pub(super) low: i64,
    pub(super) high: i64,
}

/// A search number with its implicit precision range (`100` is [99.5, 100.5)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Decimal {
    pub(super) value: f64,
    pub(super) low: f64,
    pub(super) high: f64,
}

/// Parses one `_typeFilter` query, `Type?query`, whose query string is still URL-encoded.
pub fn parse_query(text: &str) -> Result<Query, SearchError> {
    let (resource_type, query) = text.split_once('?').ok_or_else(|| {
        SearchError(format!(
            "_typeFilter {text:?} is not a search query of the form Type?name=value"
        ))
    })?;
    if !is_resource_type(resource_type) {
        return Err(SearchError(format!(
            "_typeFilter {text:?}: {resource_type:?} is not a FHIR R4 resource type"
        )));
    }
    let mut criteria = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        criteria.push(
            parse_criterion(resource_type, &name, &value)
                .map_err(|e| SearchError(format!("_typeFilter {text:?}: {e}")))?,
        );
    }
    if criteria.is_empty() {
        return Err(SearchError(format!(
            "_typeFilter {text:?} has no search parameter"
        )));
    }
    Ok(Query {
        resource_type: resource_type.to_string(),
        criteria,
    })
}

pub(super) fn parse_criterion(
    resource_type: &str,
    name: &str,
    value: &str,
) -> Result<Criterion, SearchError> {
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if RESULT_PARAMETERS.contains(&code) {
        return Err(SearchError(format!(
            "{code} is a search result parameter, which _typeFilter does not allow"
        )));
    }
    if code.contains('.') || code == "_has" {
        return Err(SearchError(format!(
            "{name}: chained and reverse-chained parameters are not supported"
        )));
    }
    let def = search_param(resource_type, code).ok_or_else(|| {
        SearchError(format!(
            "{code} is not a search parameter of {resource_type}"
        ))
    })?;
    if !def.supported() {
        return Err(SearchError(format!(
            "{code} ({} parameter) is not supported by this server",
            def.kind.as_str()
        )));
    }
    use SearchParamKind as K;
    let modifier = match (modifier, def.kind) {
        (None, _) => Modifier::None,
        (Some("missing"), _) => match value {
            "true" => Modifier::Missing(true),
            "false" => Modifier::Missing(false),
            _ => {
                return Err(SearchError(format!(
                    "{name}: the value must be true or false"
                )))
            }
        },
        (Some("not"), K::Token) => Modifier::Not,
        (Some("text"), K::Token) => Modifier::Text,
        (Some("exact"), K::String) => Modifier::Exact,
        (Some("contains"), K::String) => Modifier::Contains,
        (Some("below"), K::Uri) => Modifier::Below,
        (Some("above"), K::Uri) => Modifier::Above,
        (Some(t), K::Reference) if is_resource_type(t) => Modifier::Type(t.to_string()),
        (Some(m), kind) => {
            return Err(SearchError(format!(
                "{name}: the modifier :{m} is not supported on {} parameters",
                kind.as_str()
            )))
        }
    };
    let values = if matches!(modifier, Modifier::Missing(_)) {
        vec![SearchValue::None]
    } else {
        split_escaped(value, ',')
            .into_iter()
            .map(|v| {
                parse_value(def.kind, &modifier, &v)
                    .map_err(|e| SearchError(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if values.is_empty() {
        return Err(SearchError(format!("{name} has no value")));
    }
    Ok(Criterion {
        def,
        modifier,
        values,
    })
}

/// Splits on `sep` where it is not escaped with `\\`; escapes are kept for [`unescape`].
pub(super) fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Removes FHIR search escapes: `\\,` `\\|` `\\$` `\\\\` (any escaped character stands for itself).
pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

pub(super) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| unescape(s))
}
