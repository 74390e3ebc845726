//! Whether a resource matches a criterion: the nodes its paths select against its values.

use serde_json::Value;

use super::path::select;
use super::syntax::{Criterion, Decimal, Modifier, Prefix, Range, SearchValue};
use super::value::{normalize, parse_date_range};
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::search_types::SearchParamKind;

impl Criterion {
    pub(super) fn matches(&self, resource: &Value) -> bool {
        let mut nodes = Vec::new();
        for path in self.def.paths {
            select(resource, path, &mut nodes);
        }
        match &self.modifier {
            Modifier::Missing(missing) => nodes.is_empty() == *missing,
            Modifier::Not => !nodes.iter().any(|n| {
                self.values
                    .iter()
                    .any(|v| value_matches(self.def.kind, &Modifier::None, v, n))
            }),
            m => nodes.iter().any(|n| {
                self.values
                    .iter()
                    .any(|v| value_matches(self.def.kind, m, v, n))
            }),
        }
    }
}

/// The type a Reference points at: `Reference.type`, or from `Type/id` or `…/Type/id[/_history/v]`.
pub(super) fn reference_type(r: &Value) -> Option<&str> {
    if let Some(t) = r.get("type").and_then(Value::as_str) {
        return Some(t);
    }
    let reference = r.get("reference").and_then(Value::as_str)?;
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = reference.rsplit('/');
    let _id = parts.next()?;
    parts.next().filter(|t| is_resource_type(t))
}

pub(super) fn str_eq(node: &Value, want: &str) -> bool {
    match node {
        Value::String(s) => s == want,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
        Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

pub(super) fn value_matches(
    kind: SearchParamKind,
    modifier: &Modifier,
    value: &SearchValue,
    node: &Value,
) -> bool {
    match value {
        SearchValue::Token { system, code } => {
            token_matches(node, system.as_deref(), code.as_deref())
        }
        SearchValue::Text(text) if kind == SearchParamKind::Token => texts_of(node, true)
            .iter()
            .any(|t| normalize(t).starts_with(text.as_str())),
        SearchValue::Text(text) => texts_of(node, false).iter().any(|t| match modifier {
            Modifier::Exact => t == text,
            Modifier::Contains => normalize(t).contains(text.as_str()),
            _ => normalize(t).starts_with(text.as_str()),
        }),
        SearchValue::Reference(want) => reference_matches(node, want),
        SearchValue::Uri(want) => node.as_str().is_some_and(|s| match modifier {
            Modifier::Below => s.starts_with(want.as_str()),
            Modifier::Above => want.starts_with(s),
            _ => s == want,
        }),
        SearchValue::Date(prefix, range) => date_ranges(node)
            .into_iter()
            .any(|target| compare_ranges(*prefix, *range, target)),
        SearchValue::Number(prefix, number) => node
            .as_f64()
            .is_some_and(|n| compare_number(*prefix, *number, n)),
        SearchValue::Quantity {
            prefix,
            number,
            system,
            code,
        } => {
            let Some(n) = node.get("value").and_then(Value::as_f64) else {
                return false;
            };
            if !compare_number(*prefix, *number, n) {
                return false;
            }
            let field = |k: &str| node.get(k).and_then(Value::as_str);
            let system_ok = system.as_deref().is_none_or(|s| field("system") == Some(s));
            let code_ok = code.as_deref().is_none_or(|c| {
                field("code") == Some(c) || (system.is_none() && field("unit") == Some(c))
            });
            system_ok && code_ok
        }
        SearchValue::None => false,
    }
}

pub(super) fn token_matches(node: &Value, system: Option<&str>, code: Option<&str>) -> bool {
    let pair = |sys: Option<&str>, val: Option<&str>| {
        let system_ok = match system {
            None => true,
            Some("") => sys.is_none(),
            Some(s) => sys == Some(s),
        };
        let code_ok = match code {
            None => true,
            Some(c) => val == Some(c),
        };
        system_ok && code_ok
    };
    match node {
        Value::Object(o) => {
            if let Some(Value::Array(codings)) = o.get("coding") {
                return codings.iter().any(|c| token_matches(c, system, code));
            }
            let sys = o.get("system").and_then(Value::as_str);
            if let Some(c) = o.get("code").and_then(Value::as_str) {
                return pair(sys, Some(c));
            }
            // Identifier, ContactPoint.
            pair(sys, o.get("value").and_then(Value::as_str))
        }
        // code, boolean, string, uri, id: a code has no system of its own.
        other => match code {
            Some(c) => str_eq(other, c),
            None => false,
        },
    }
}

/// Strings a string (or token :text) parameter looks at in a node.
pub(super) fn texts_of(node: &Value, token_text: bool) -> Vec<String> {
    let mut out = Vec::new();
    match node {
        Value::String(s) => out.push(s.clone()),
        Value::Object(o) if token_text => {
            for k in ["text", "display"] {
                if let Some(s) = o.get(k).and_then(Value::as_str) {
                    out.push(s.to_string());
                }
            }
            if let Some(Value::Array(codings)) = o.get("coding") {
                out.extend(
                    codings
                        .iter()
                        .filter_map(|c| c.get("display").and_then(Value::as_str))
                        .map(str::to_string),
                );
            }
        }
        Value::Object(o) => {
            // HumanName and Address: every name or address part.
            for k in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match o.get(k) {
                    Some(Value::String(s)) => out.push(s.clone()),
                    Some(Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

pub(super) fn reference_matches(node: &Value, want: &str) -> bool {
    let Some(reference) = node
        .get("reference")
        .and_then(Value::as_str)
        .or_else(|| node.as_str())
    else {
        return false;
    };
    // canonical references may carry a version.
    let reference = reference.split('|').next().unwrap_or(reference);
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    if reference == want {
        return true;
    }
    if want.contains("://") {
        return false;
    }
    if want.contains('/') {
        // Type/id matches an absolute reference ending in /Type/id.
        reference.ends_with(&format!("/{want}"))
    } else {
        // A bare id matches any type.
        reference.rsplit('/').next() == Some(want) && reference.contains('/')
    }
}

/// The ranges a date-like node covers: date, dateTime, instant, Period, Timing.event.
pub(super) fn date_ranges(node: &Value) -> Vec<Range> {
    match node {
        Value::String(s) => parse_date_range(s).into_iter().collect(),
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let start = o
                .get("start")
                .and_then(Value::as_str)
                .and_then(parse_date_range);
            let end = o
                .get("end")
                .and_then(Value::as_str)
                .and_then(parse_date_range);
            vec![Range {
                low: start.map_or(i64::MIN, |r| r.low),
                high: end.map_or(i64::MAX, |r| r.high),
            }]
        }
        Value::Object(o) => match o.get("event") {
            Some(Value::Array(events)) => events
                .iter()
                .filter_map(Value::as_str)
                .filter_map(parse_date_range)
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// FHIR's date comparison: `search` is the parameter's range, `target` the resource's.
pub(super) fn compare_ranges(prefix: Prefix, search: Range, target: Range) -> bool {
    let contains = search.low <= target.low && target.high <= search.high;
    match prefix {
        Prefix::Eq => contains,
        Prefix::Ne => !contains,
        Prefix::Gt => target.high > search.high,
        Prefix::Lt => target.low < search.low,
        Prefix::Ge => target.high > search.high || contains,
        Prefix::Le => target.low < search.low || contains,
        Prefix::Sa => target.low >= search.high,
        Prefix::Eb => target.high <= search.low,
        Prefix::Ap => target.low < search.high && target.high > search.low,
    }
}

pub(super) fn compare_number(prefix: Prefix, search: Decimal, n: f64) -> bool {
    match prefix {
        Prefix::Eq => search.low <= n && n < search.high,
        Prefix::Ne => !(search.low <= n && n < search.high),
        Prefix::Gt | Prefix::Sa => n > search.value,
        Prefix::Lt | Prefix::Eb => n < search.value,
        Prefix::Ge => n >= search.value,
        Prefix::Le => n <= search.value,
        Prefix::Ap => (n - search.value).abs() <= search.value.abs() * 0.1,
    }
}
