//! FHIR search queries evaluated against resources, for `_typeFilter`.
//!
//! A query is `Type?name[:modifier]=value[,value]&…`: parameters are AND'd, comma-separated
//! values OR'd, and several queries for one type OR'd. Parameters and their element paths come
//! from the official R4 SearchParameter definitions (`search_table.rs`); the parameter types
//! token, reference, date, string, quantity, uri and number are evaluated, with the modifiers
//! `:missing` (all), `:not` and `:text` (token), `:exact` and `:contains` (string), `:below`
//! and `:above` (uri) and `:[Type]` (reference). Anything else is refused with a message that
//! says why, never silently ignored.

use chrono::{DateTime, Months, NaiveDate, TimeDelta, Utc};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::resource_types::is_resource_type;
use super::search_types::{search_param, SearchParamDef, SearchParamKind};

/// Search result parameters a `_typeFilter` must not use (IG: `_include` and `_sort` are errors).
const RESULT_PARAMETERS: &[&str] = &[
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

/// One parsed `_typeFilter` query.
#[derive(Debug, Clone)]
pub struct Query {
    pub resource_type: String,
    criteria: Vec<Criterion>,
}

#[derive(Debug, Clone)]
struct Criterion {
    def: &'static SearchParamDef,
    modifier: Modifier,
    /// OR'd.
    values: Vec<SearchValue>,
}

#[derive(Debug, Clone, PartialEq)]
enum Modifier {
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
enum Prefix {
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
enum SearchValue {
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
struct Range {
    low: i64,
    high: i64,
}

/// A search number with its implicit precision range (`100` is [99.5, 100.5)).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decimal {
    value: f64,
    low: f64,
    high: f64,
}

/// Parses one `_typeFilter` query, `Type?query`, whose query string is still URL-encoded.
pub fn parse_query(text: &str) -> Result<Query, String> {
    let (resource_type, query) = text.split_once('?').ok_or_else(|| {
        format!("_typeFilter {text:?} is not a search query of the form Type?name=value")
    })?;
    if !is_resource_type(resource_type) {
        return Err(format!(
            "_typeFilter {text:?}: {resource_type:?} is not a FHIR R4 resource type"
        ));
    }
    let mut criteria = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        criteria.push(
            parse_criterion(resource_type, &name, &value)
                .map_err(|e| format!("_typeFilter {text:?}: {e}"))?,
        );
    }
    if criteria.is_empty() {
        return Err(format!("_typeFilter {text:?} has no search parameter"));
    }
    Ok(Query {
        resource_type: resource_type.to_string(),
        criteria,
    })
}

fn parse_criterion(resource_type: &str, name: &str, value: &str) -> Result<Criterion, String> {
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if RESULT_PARAMETERS.contains(&code) {
        return Err(format!(
            "{code} is a search result parameter, which _typeFilter does not allow"
        ));
    }
    if code.contains('.') || code == "_has" {
        return Err(format!(
            "{name}: chained and reverse-chained parameters are not supported"
        ));
    }
    let def = search_param(resource_type, code)
        .ok_or_else(|| format!("{code} is not a search parameter of {resource_type}"))?;
    if !def.supported() {
        return Err(format!(
            "{code} ({} parameter) is not supported by this server",
            def.kind.as_str()
        ));
    }
    use SearchParamKind as K;
    let modifier = match (modifier, def.kind) {
        (None, _) => Modifier::None,
        (Some("missing"), _) => match value {
            "true" => Modifier::Missing(true),
            "false" => Modifier::Missing(false),
            _ => return Err(format!("{name}: the value must be true or false")),
        },
        (Some("not"), K::Token) => Modifier::Not,
        (Some("text"), K::Token) => Modifier::Text,
        (Some("exact"), K::String) => Modifier::Exact,
        (Some("contains"), K::String) => Modifier::Contains,
        (Some("below"), K::Uri) => Modifier::Below,
        (Some("above"), K::Uri) => Modifier::Above,
        (Some(t), K::Reference) if is_resource_type(t) => Modifier::Type(t.to_string()),
        (Some(m), kind) => {
            return Err(format!(
                "{name}: the modifier :{m} is not supported on {} parameters",
                kind.as_str()
            ))
        }
    };
    let values = if matches!(modifier, Modifier::Missing(_)) {
        vec![SearchValue::None]
    } else {
        split_escaped(value, ',')
            .into_iter()
            .map(|v| parse_value(def.kind, &modifier, &v).map_err(|e| format!("{name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?
    };
    if values.is_empty() {
        return Err(format!("{name} has no value"));
    }
    Ok(Criterion {
        def,
        modifier,
        values,
    })
}

/// Splits on `sep` where it is not escaped with `\\`; escapes are kept for [`unescape`].
fn split_escaped(text: &str, sep: char) -> Vec<String> {
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
fn unescape(text: &str) -> String {
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

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| unescape(s))
}

fn parse_value(kind: SearchParamKind, modifier: &Modifier, v: &str) -> Result<SearchValue, String> {
    use SearchParamKind as K;
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok(match kind {
        K::Token if *modifier == Modifier::Text => SearchValue::Text(normalize(&unescape(v))),
        K::Token => match split_escaped(v, '|').as_slice() {
            [code] => SearchValue::Token {
                system: None,
                code: Some(unescape(code)),
            },
            [system, code] => SearchValue::Token {
                // `|code`: no system; `system|`: any code of the system.
                system: Some(unescape(system)),
                code: non_empty(code),
            },
            _ => return Err(format!("{v:?} is not a token ([system]|[code])")),
        },
        K::String if *modifier == Modifier::Exact => SearchValue::Text(unescape(v)),
        K::String => SearchValue::Text(normalize(&unescape(v))),
        K::Uri => SearchValue::Uri(unescape(v)),
        K::Reference => {
            let v = unescape(v);
            match modifier {
                Modifier::Type(t) if !v.contains('/') => SearchValue::Reference(format!("{t}/{v}")),
                _ => SearchValue::Reference(v),
            }
        }
        K::Date => {
            let (prefix, rest) = split_prefix(v);
            let range = parse_date_range(rest).ok_or_else(|| {
                format!("{v:?} is not a date (e.g. 2020, 2020-01-31, 2020-01-31T10:00:00Z)")
            })?;
            SearchValue::Date(prefix, range)
        }
        K::Number => {
            let (prefix, rest) = split_prefix(v);
            SearchValue::Number(
                prefix,
                parse_decimal(rest).ok_or_else(|| format!("{v:?} is not a number"))?,
            )
        }
        K::Quantity => {
            let parts = split_escaped(v, '|');
            let (prefix, number) = split_prefix(&parts[0]);
            let number = parse_decimal(number)
                .ok_or_else(|| format!("{v:?} is not a quantity ([prefix]number|system|code)"))?;
            let (system, code) = match parts.as_slice() {
                [_] => (None, None),
                [_, system, code] => (non_empty(system), non_empty(code)),
                _ => {
                    return Err(format!(
                        "{v:?} is not a quantity ([prefix]number|system|code)"
                    ))
                }
            };
            SearchValue::Quantity {
                prefix,
                number,
                system,
                code,
            }
        }
        K::Composite | K::Special => return Err("not supported".into()),
    })
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (p, prefix) in prefixes {
        if let Some(rest) = v.strip_prefix(p) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, v)
}

fn parse_decimal(v: &str) -> Option<Decimal> {
    let value: f64 = v.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // Implicit precision: half a unit of the last given digit (exponent forms are exact).
    let half = match (v.contains(['e', 'E']), v.split_once('.')) {
        (true, _) => 0.0,
        (false, Some((_, frac))) => 0.5 * 10f64.powi(-(frac.len() as i32)),
        (false, None) => 0.5,
    };
    Some(Decimal {
        value,
        low: value - half,
        high: value + half,
    })
}

/// The range a FHIR date, dateTime or instant covers: `2020` is the whole year, `2020-03` the
/// month, a time to the second its second (or millisecond). No time zone: UTC.
fn parse_date_range(v: &str) -> Option<Range> {
    let v = v.trim();
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    let date = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let bytes = v.as_bytes();
    if v.len() == 4 && bytes.iter().all(u8::is_ascii_digit) {
        let y: i32 = v.parse().ok()?;
        let low = midnight(date(y, 1, 1)?)?;
        let high = midnight(date(y + 1, 1, 1)?)?;
        return Some(Range {
            low: ms(low),
            high: ms(high),
        });
    }
    if v.len() == 7 && bytes[4] == b'-' {
        let y: i32 = v[..4].parse().ok()?;
        let m: u32 = v[5..].parse().ok()?;
        let low = date(y, m, 1)?;
        let high = low.checked_add_months(Months::new(1))?;
        return Some(Range {
            low: ms(midnight(low)?),
            high: ms(midnight(high)?),
        });
    }
    if v.len() == 10 {
        let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?;
        let low = midnight(d)?;
        return Some(Range {
            low: ms(low),
            high: ms(low + TimeDelta::days(1)),
        });
    }
    if v.len() > 10 && bytes[10] == b'T' {
        let t = match DateTime::parse_from_rfc3339(v) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                let fmt = if v.len() == 16 {
                    "%Y-%m-%dT%H:%M"
                } else {
                    "%Y-%m-%dT%H:%M:%S%.f"
                };
                chrono::NaiveDateTime::parse_from_str(v, fmt)
                    .ok()?
                    .and_utc()
            }
        };
        let time = &v[11..];
        let unit = if time.len() >= 5 && !time[5..].starts_with(':') {
            60_000 // hh:mm
        } else if time.contains('.') {
            1
        } else {
            1000
        };
        let low = ms(t);
        return Some(Range {
            low,
            high: low + unit,
        });
    }
    None
}

/// Lower case without accents, for string matching.
fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .flat_map(char::to_lowercase)
        .collect()
}

impl Query {
    /// True when the resource matches every parameter of the query.
    pub fn matches(&self, resource: &Value) -> bool {
        self.criteria.iter().all(|c| c.matches(resource))
    }
}

impl Criterion {
    fn matches(&self, resource: &Value) -> bool {
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

/// Collects the nodes a path selects, arrays flattened.
fn select<'a>(root: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let mut current = vec![root];
    for step in split_path(path) {
        let mut next = Vec::new();
        for node in current {
            step_into(node, step, &mut next);
        }
        current = next;
    }
    out.extend(current);
}

fn split_path(path: &str) -> Vec<&str> {
    let mut steps = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in path.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                steps.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    steps.push(&path[start..]);
    steps
}

fn push_flat<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

fn step_into<'a>(node: &'a Value, step: &str, out: &mut Vec<&'a Value>) {
    let Some(obj) = node.as_object() else { return };
    let (name, filter) = match step.find(['(', '{']) {
        Some(i) => (&step[..i], Some(&step[i..])),
        None => (step, None),
    };
    let mut found = Vec::new();
    if let Some(choice) = name.strip_suffix("[x]") {
        for (k, v) in obj {
            if k.len() > choice.len()
                && k.starts_with(choice)
                && k[choice.len()..].starts_with(|c: char| c.is_ascii_uppercase())
            {
                push_flat(v, &mut found);
            }
        }
    } else if let Some(v) = obj.get(name) {
        push_flat(v, &mut found);
    }
    match filter {
        None => out.extend(found),
        Some(f) if f.starts_with('{') => {
            let target = f.trim_matches(|c| c == '{' || c == '}');
            out.extend(
                found
                    .into_iter()
                    .filter(|r| reference_type(r) == Some(target)),
            );
        }
        Some(f) => {
            let inner = f.trim_start_matches('(').trim_end_matches(')');
            let Some((field, want)) = inner.split_once('=') else {
                return;
            };
            out.extend(
                found
                    .into_iter()
                    .filter(|n| n.get(field).and_then(Value::as_str) == Some(want)),
            );
        }
    }
}

/// The type a Reference points at: `Reference.type`, or from `Type/id` or `…/Type/id[/_history/v]`.
fn reference_type(r: &Value) -> Option<&str> {
    if let Some(t) = r.get("type").and_then(Value::as_str) {
        return Some(t);
    }
    let reference = r.get("reference").and_then(Value::as_str)?;
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = reference.rsplit('/');
    let _id = parts.next()?;
    parts.next().filter(|t| is_resource_type(t))
}

fn str_eq(node: &Value, want: &str) -> bool {
    match node {
        Value::String(s) => s == want,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
        Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

fn value_matches(
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

fn token_matches(node: &Value, system: Option<&str>, code: Option<&str>) -> bool {
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
fn texts_of(node: &Value, token_text: bool) -> Vec<String> {
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

fn reference_matches(node: &Value, want: &str) -> bool {
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
fn date_ranges(node: &Value) -> Vec<Range> {
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
fn compare_ranges(prefix: Prefix, search: Range, target: Range) -> bool {
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

fn compare_number(prefix: Prefix, search: Decimal, n: f64) -> bool {
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

/// The `_typeFilter` queries of an export, grouped by type: a resource of a type with queries is
/// exported when any of them matches.
#[derive(Debug, Clone, Default)]
pub struct TypeFilters {
    queries: Vec<Query>,
}

impl TypeFilters {
    /// Parses every query (each a `Type?query` string as given in `_typeFilter`).
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, String> {
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
mod tests {
    use super::*;
    use serde_json::json;

    fn obs() -> Value {
        json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "meta": {"lastUpdated": "2021-06-01T10:00:00Z", "tag": [{"system": "urn:t", "code": "x"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}], "text": "Glucose"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2020-03-15T08:30:00+00:00",
            "valueQuantity": {"value": 105.2, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
        })
    }

    fn m(q: &str, r: &Value) -> bool {
        parse_query(q).unwrap().matches(r)
    }

    #[test]
    fn token_forms() {
        let o = obs();
        assert!(m("Observation?category=laboratory", &o));
        assert!(m("Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", &o));
        assert!(!m("Observation?category=urn:other|laboratory", &o));
        assert!(m("Observation?category=vital-signs,laboratory", &o));
        assert!(!m("Observation?category=vital-signs", &o));
        assert!(m("Observation?code=http://loinc.org|", &o));
        assert!(!m("Observation?code=|2339-0", &o));
        assert!(m("Observation?status=final", &o));
        assert!(m("Observation?status:not=amended", &o));
        assert!(!m("Observation?status:not=final", &o));
        assert!(m("Observation?code:text=gluc", &o));
        assert!(m("Observation?_tag=urn:t|x", &o));
        assert!(m("Observation?_id=o1", &o));
    }

    #[test]
    fn commas_escaped_in_the_url_are_or_values() {
        // `%2C` is how a comma inside one _typeFilter query reaches us.
        let q = "Observation?category=laboratory%2Cvital-signs";
        assert!(m(q, &obs()));
    }

    #[test]
    fn escaped_separators_are_literal() {
        assert_eq!(split_escaped(r"a\,b,c", ','), [r"a\,b", "c"]);
        assert_eq!(split_escaped(r"s\|x|c", '|'), [r"s\|x", "c"]);
        assert_eq!(unescape(r"a\,b\\c\|d"), r"a,b\c|d");
        let p = json!({"resourceType": "Patient", "name": [{"family": "a,b"}]});
        assert!(m(r"Patient?family=a\,b", &p));
        assert!(m("Patient?family=zz,a", &p), "an unescaped comma ORs");
    }

    #[test]
    fn parameters_are_anded() {
        let o = obs();
        assert!(m("Observation?category=laboratory&status=final", &o));
        assert!(!m("Observation?category=laboratory&status=preliminary", &o));
    }

    #[test]
    fn reference_forms() {
        let o = obs();
        assert!(m("Observation?subject=Patient/p1", &o));
        assert!(m("Observation?patient=p1", &o));
        assert!(m("Observation?subject:Patient=p1", &o));
        assert!(!m("Observation?subject=Patient/p2", &o));
        assert!(!m("Observation?subject:Group=p1", &o));
    }

    #[test]
    fn date_prefixes_and_precision() {
        let o = obs();
        assert!(m("Observation?date=2020", &o));
        assert!(m("Observation?date=2020-03", &o));
        assert!(m("Observation?date=2020-03-15", &o));
        assert!(!m("Observation?date=2020-03-16", &o));
        assert!(m("Observation?date=gt2020-01-01", &o));
        assert!(!m("Observation?date=gt2020-03-15", &o));
        assert!(m("Observation?date=ge2020-03-15", &o));
        assert!(m("Observation?date=lt2021", &o));
        assert!(m("Observation?date=le2020-03-15", &o));
        assert!(m("Observation?date=sa2019", &o));
        assert!(m("Observation?date=eb2021-01-01", &o));
        assert!(m("Observation?date=ne2019", &o));
        assert!(m("Observation?_lastUpdated=gt2021-05-31T00:00:00Z", &o));
        assert!(!m("Observation?_lastUpdated=gt2021-06-01T10:00:00Z", &o));
        assert!(m("Observation?date=2020-03-15T08:30:00Z", &o));
    }

    #[test]
    fn periods_are_ranges() {
        let e = json!({"resourceType": "Encounter", "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-03T10:00:00Z"}});
        assert!(m("Encounter?date=gt2020-01-02", &e));
        assert!(m("Encounter?date=lt2020-01-02", &e));
        assert!(!m("Encounter?date=2020-01-02", &e));
        assert!(m("Encounter?date=2020-01", &e));
        let open =
            json!({"resourceType": "Encounter", "period": {"start": "2020-01-01T10:00:00Z"}});
        assert!(m("Encounter?date=gt2030", &open));
    }

    #[test]
    fn quantity_and_number() {
        let o = obs();
        assert!(m("Observation?value-quantity=gt100", &o));
        assert!(m("Observation?value-quantity=105.2", &o));
        assert!(m("Observation?value-quantity=105", &o));
        assert!(!m("Observation?value-quantity=106", &o));
        assert!(m(
            "Observation?value-quantity=lt200|http://unitsofmeasure.org|mg/dL",
            &o
        ));
        assert!(!m(
            "Observation?value-quantity=lt200|http://unitsofmeasure.org|mmol/L",
            &o
        ));
        assert!(m("Observation?value-quantity=le105.2||mg/dL", &o));
        let r =
            json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.25}]});
        assert!(m("RiskAssessment?probability=gt0.2", &r));
        assert!(!m("RiskAssessment?probability=gt0.3", &r));
    }

    #[test]
    fn strings_are_prefix_and_accent_insensitive() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Zoë"]}],
                       "address": [{"city": "Boston"}]});
        assert!(m("Patient?family=muller", &p));
        assert!(m("Patient?name=zoe", &p));
        assert!(m("Patient?address-city=bos", &p));
        assert!(!m("Patient?address-city=ton", &p));
        assert!(m("Patient?address-city:contains=ton", &p));
        assert!(m("Patient?family:exact=Müller", &p));
        assert!(!m("Patient?family:exact=muller", &p));
        assert!(m("Patient?gender:missing=true", &p));
        assert!(!m("Patient?family:missing=true", &p));
    }

    #[test]
    fn uri_modifiers() {
        let v = json!({"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/a"});
        assert!(m("ValueSet?url=http://example.org/fhir/ValueSet/a", &v));
        assert!(!m("ValueSet?url=http://example.org/fhir", &v));
        assert!(m("ValueSet?url:below=http://example.org/fhir", &v));
    }

    #[test]
    fn refusals_say_why() {
        for (q, want) in [
            (
                "Observation?_include=Observation:subject",
                "result parameter",
            ),
            ("Observation?_sort=date", "result parameter"),
            ("Observation?subject.name=x", "chained"),
            ("Observation?foo=1", "not a search parameter of Observation"),
            ("Observation?code-value-quantity=x", "not supported"),
            ("Observation?code:below=x", "modifier :below"),
            ("Observation?date=yesterday", "is not a date"),
            ("Observation?value-quantity=abc", "is not a quantity"),
            ("Foo?x=1", "not a FHIR R4 resource type"),
            ("Observation", "Type?name=value"),
            ("Observation?", "no search parameter"),
        ] {
            let e = parse_query(q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }

    #[test]
    fn queries_for_one_type_are_ored() {
        let f = TypeFilters::parse(&[
            "Observation?category=vital-signs",
            "Observation?status=final",
            "Condition?clinical-status=active",
        ])
        .unwrap();
        let qs = f.for_type("Observation");
        assert_eq!(qs.len(), 2);
        assert!(matches_any(&qs, &obs()));
        assert!(matches_any(&f.for_type("Patient"), &obs()));
    }
}
