//! What `_typeFilter` and `_elements` do to the rows of one work item: drop the resources no
//! query matches, cut the others down to the listed elements. Without either, rows are copied
//! as stored, unparsed.

use std::borrow::Cow;

use serde_json::Value;
use tracing::warn;

use crate::fhir::elements::{subset, ElementsFilter};
use crate::fhir::raw::RawObject;
use crate::fhir::search::{matches_any, Query, TypeFilters};

#[derive(Debug, Clone, Default)]
pub struct RowTransform {
    resource_type: String,
    queries: Vec<Query>,
    keep: Option<Vec<String>>,
}

impl RowTransform {
    pub fn new(resource_type: &str, filters: &TypeFilters, elements: &ElementsFilter) -> Self {
        RowTransform {
            resource_type: resource_type.to_string(),
            queries: filters.for_type(resource_type),
            keep: elements.for_type(resource_type),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.queries.is_empty() && self.keep.is_none()
    }

    /// Whether `_typeFilter` keeps the resource (for `deleted[]`: a deleted resource is listed
    /// when its last content matches, like the resources in `output`).
    pub fn keeps(&self, text: &str) -> bool {
        if self.queries.is_empty() {
            return true;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(resource) => matches_any(&self.queries, &resource),
            // Never drop silently (see `apply`).
            Err(_) => true,
        }
    }

    /// The line to export for a stored resource, or None when `_typeFilter` drops it.
    pub fn apply<'a>(&self, text: &'a str) -> Option<Cow<'a, str>> {
        if self.is_identity() {
            return Some(Cow::Borrowed(text));
        }
        if !self.queries.is_empty() {
            let resource: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    // Stored resources are JSON the loader wrote; never drop data silently.
                    warn!(error = %e, "stored resource is not JSON; exported as stored");
                    return Some(Cow::Borrowed(text));
                }
            };
            if !matches_any(&self.queries, &resource) {
                return None;
            }
        }
        // `_elements` edits the stored text's members: what is kept stays byte for byte.
        match (&self.keep, RawObject::parse(text)) {
            (Some(keep), Ok(mut obj)) => {
                subset(&mut obj, &self.resource_type, keep);
                Some(Cow::Owned(obj.to_text()))
            }
            _ => Some(Cow::Borrowed(text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_copies_and_filters_drop_or_subset() {
        let none = RowTransform::new(
            "Observation",
            &TypeFilters::default(),
            &ElementsFilter::default(),
        );
        assert!(none.is_identity());
        let text = r#"{"resourceType":"Observation","id":"a","status":"final","code":{"text":"x"},"note":[{"text":"n"}]}"#;
        assert!(matches!(none.apply(text), Some(Cow::Borrowed(_))));

        let filters = TypeFilters::parse(&["Observation?status=final"]).unwrap();
        let t = RowTransform::new("Observation", &filters, &ElementsFilter::new(&["id"]));
        let out = t.apply(text).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("note").is_none());
        assert_eq!(v["status"], "final");
        assert_eq!(v["meta"]["tag"][0]["code"], "SUBSETTED");

        let amended = text.replace("final", "amended");
        assert!(t.apply(&amended).is_none());
        assert!(t.keeps(text));
        assert!(!t.keeps(&amended));
        assert!(none.keeps(&amended), "no _typeFilter keeps everything");
    }
}
