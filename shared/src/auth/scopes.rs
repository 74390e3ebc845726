//! SMART system scopes: which resource types a token may export.
//!
//! `system/<Type|*>.<permissions>` in SMART v1 (`read`, `write`, `*`) or v2 (`c r u d s` in that
//! order, e.g. `rs`) syntax; `system/*.read` = `system/*.rs`. Only reading matters to an export,
//! so a scope grants its type when it includes read (`read`, `*`, or `r`). `patient/` and `user/`
//! scopes, v2 granular scopes (`?category=…`) and anything else are not supported: the token
//! endpoint leaves them out of the grant instead of refusing the request.

use std::collections::BTreeSet;

use crate::fhir::resource_types::is_resource_type;

/// Scopes that cannot be registered for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScopeError(pub String);

/// The resource types a token may export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeSet {
    All,
    Only(BTreeSet<String>),
}

impl TypeSet {
    pub fn allows(&self, resource_type: &str) -> bool {
        match self {
            TypeSet::All => true,
            TypeSet::Only(types) => types.contains(resource_type),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, TypeSet::Only(t) if t.is_empty())
    }

    fn insert(&mut self, t: &str) {
        if t == "*" {
            *self = TypeSet::All;
        } else if let TypeSet::Only(types) = self {
            types.insert(t.to_string());
        }
    }
}

/// One scope that grants reading: its type (`*` for all) and whether it used v2 syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadScope {
    resource_type: String,
    v2: Option<String>,
}

fn parse_read_scope(scope: &str) -> Option<ReadScope> {
    let rest = scope.strip_prefix("system/")?;
    let (t, perms) = rest.split_once('.')?;
    if t != "*" && !is_resource_type(t) {
        return None;
    }
    let v2 = match perms {
        "read" | "*" => None,
        p if !p.is_empty()
            && p.len() <= 5
            && p.chars().all(|c| "cruds".contains(c))
            && is_in_order(p)
            && p.contains('r') =>
        {
            // Only the reading permissions are granted.
            Some(p.chars().filter(|c| *c == 'r' || *c == 's').collect())
        }
        _ => return None,
    };
    Some(ReadScope {
        resource_type: t.to_string(),
        v2,
    })
}

fn is_in_order(p: &str) -> bool {
    let order = "cruds";
    let idx: Vec<usize> = p.chars().filter_map(|c| order.find(c)).collect();
    idx.windows(2).all(|w| w[0] < w[1])
}

fn render(s: &ReadScope) -> String {
    match &s.v2 {
        None => format!("system/{}.read", s.resource_type),
        Some(p) => format!("system/{}.{p}", s.resource_type),
    }
}

/// The types a (granted) scope string allows.
pub fn types_of(scopes: &str) -> TypeSet {
    let mut set = TypeSet::Only(BTreeSet::new());
    for s in scopes.split_whitespace().filter_map(parse_read_scope) {
        set.insert(&s.resource_type);
    }
    set
}

/// What the token endpoint grants: of the `requested` scopes, the supported ones, narrowed to
/// the types the client is registered for (`registered`, a scope string). Returns the granted
/// scope string (empty: nothing can be granted).
pub fn grant(requested: &str, registered: &str) -> String {
    let allowed = types_of(registered);
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: ReadScope| {
        let r = render(&s);
        if !out.contains(&r) {
            out.push(r);
        }
    };
    for want in requested.split_whitespace().filter_map(parse_read_scope) {
        match (&allowed, want.resource_type.as_str()) {
            (TypeSet::All, _) => push(want),
            (TypeSet::Only(types), "*") => {
                for t in types {
                    push(ReadScope {
                        resource_type: t.clone(),
                        v2: want.v2.clone(),
                    });
                }
            }
            (TypeSet::Only(types), t) if types.contains(t) => push(want),
            _ => {}
        }
    }
    out.join(" ")
}

/// Checks a scope list for registration: every entry must be a supported read scope.
pub fn check_registered(scopes: &str) -> Result<(), ScopeError> {
    if scopes.split_whitespace().next().is_none() {
        return Err(ScopeError(
            "at least one scope is needed, e.g. system/*.read".into(),
        ));
    }
    for s in scopes.split_whitespace() {
        if parse_read_scope(s).is_none() {
            return Err(ScopeError(format!(
                "{s:?} is not a supported scope (system/<Type|*>.read, .rs, .r or .*)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_read_scopes_are_equivalent() {
        assert_eq!(types_of("system/*.read"), TypeSet::All);
        assert_eq!(types_of("system/*.rs"), TypeSet::All);
        assert_eq!(types_of("system/*.cruds"), TypeSet::All);
        let t = types_of("system/Patient.read system/Observation.rs");
        assert!(t.allows("Patient") && t.allows("Observation") && !t.allows("Condition"));
        assert!(types_of("system/*.write system/*.cud").is_empty());
        assert!(types_of("patient/*.read user/*.read openid launch").is_empty());
        assert!(types_of("system/Nope.read system/*.sr system/*.rs?category=x").is_empty());
    }

    #[test]
    fn the_grant_is_the_supported_subset_of_the_request_within_the_registration() {
        assert_eq!(grant("system/*.read", "system/*.read"), "system/*.read");
        assert_eq!(
            grant("system/*.cruds launch system/*.write", "system/*.read"),
            "system/*.rs"
        );
        assert_eq!(
            grant("system/*.read", "system/Patient.read system/Condition.read"),
            "system/Condition.read system/Patient.read"
        );
        assert_eq!(
            grant(
                "system/Observation.rs system/Patient.rs",
                "system/Patient.read"
            ),
            "system/Patient.rs"
        );
        assert_eq!(grant("patient/*.read", "system/*.read"), "");
    }

    #[test]
    fn registration_takes_only_supported_scopes() {
        assert!(check_registered("system/*.read").is_ok());
        assert!(check_registered("system/Patient.rs system/Observation.read").is_ok());
        assert!(check_registered("").is_err());
        assert!(check_registered("system/*.write").is_err());
        assert!(check_registered("user/*.read").is_err());
    }
}
