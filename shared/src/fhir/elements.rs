//! `_elements`: resources cut down to the listed top-level elements.
//!
//! `_elements=status,Patient.name`: an element without a type applies to every type (so every
//! exported resource is subsetted); `Type.element` applies to that type only (other types come
//! whole unless an untyped element is also listed). A subsetted resource keeps `resourceType`,
//! `id`, `meta`, its required elements (min >= 1 in the R4 StructureDefinition) and the listed
//! ones, and gets the `SUBSETTED` tag in `meta.tag` so nobody mistakes it for the whole resource.

use serde_json::Value;

use super::raw::{self, RawObject};

use super::resource_types::is_resource_type;
use super::search_table::ELEMENTS;
use super::search_types::elements;

/// An `_elements` entry this server cannot honour (the message says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ElementsError(pub String);

pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// The parsed `_elements` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementsFilter {
    common: Vec<String>,
    typed: Vec<(String, String)>,
}

impl ElementsFilter {
    /// Validates one `_elements` entry (`name` or `Type.name`) against the R4 definitions.
    pub fn check(entry: &str) -> Result<(), ElementsError> {
        match entry.split_once('.') {
            Some((t, name)) => {
                if !is_resource_type(t) {
                    return Err(ElementsError(format!(
                        "_elements: {t:?} is not a FHIR R4 resource type"
                    )));
                }
                if !elements(t).iter().any(|e| e.name == name) {
                    return Err(ElementsError(format!(
                        "_elements: {name:?} is not a top-level element of {t} (only root elements may be listed)"
                    )));
                }
            }
            None => {
                if !ELEMENTS
                    .iter()
                    .any(|(_, els)| els.iter().any(|e| e.name == entry))
                {
                    return Err(ElementsError(format!(
                        "_elements: {entry:?} is not a top-level element of any R4 resource type"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Builds the filter from entries already checked with [`ElementsFilter::check`].
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Self {
        let mut f = ElementsFilter::default();
        for e in entries {
            match e.as_ref().split_once('.') {
                Some((t, n)) => f.typed.push((t.to_string(), n.to_string())),
                None => f.common.push(e.as_ref().to_string()),
            }
        }
        f
    }

    /// The elements to keep for a type, or None when its resources come whole.
    pub fn for_type(&self, resource_type: &str) -> Option<Vec<String>> {
        let typed: Vec<String> = self
            .typed
            .iter()
            .filter(|(t, _)| t == resource_type)
            .map(|(_, n)| n.clone())
            .collect();
        if self.common.is_empty() && typed.is_empty() {
            return None;
        }
        let mut keep = self.common.clone();
        keep.extend(typed);
        for e in elements(resource_type).iter().filter(|e| e.required) {
            keep.push(e.name.to_string());
        }
        keep.extend(["resourceType", "id", "meta"].map(String::from));
        Some(keep)
    }
}

/// Removes every top-level element of `resource` not in `keep` (choice elements by their
/// `[x]`-less name, primitive extensions `_name` with their element) and tags it SUBSETTED.
/// Works on the stored text's members, so what is kept is copied byte for byte (decimals keep
/// their precision).
pub fn subset(resource: &mut RawObject, resource_type: &str, keep: &[String]) {
    let defs = elements(resource_type);
    let kept = |key: &str| {
        let key = key.strip_prefix('_').unwrap_or(key);
        keep.iter().any(|k| {
            k == key
                || (key.len() > k.len()
                    && key.starts_with(k.as_str())
                    && key[k.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                    && defs.iter().any(|d| d.choice && d.name == k))
        })
    };
    resource.retain(kept);
    let mut meta = match resource.get("meta") {
        None => RawObject::default(),
        Some(m) => match RawObject::parse(m.get()) {
            Ok(m) => m,
            Err(_) => return,
        },
    };
    let mut tags = match meta.get("tag") {
        None => Vec::new(),
        Some(t) => match raw::array_items(t) {
            Ok(tags) => tags,
            Err(_) => return,
        },
    };
    let tagged = tags.iter().any(|t| {
        serde_json::from_str::<Value>(t.get()).is_ok_and(|t| {
            t.get("code").and_then(Value::as_str) == Some("SUBSETTED")
                && t.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
        })
    });
    if !tagged {
        tags.push(raw::to_raw(&serde_json::json!({
            "system": SUBSETTED_SYSTEM, "code": "SUBSETTED", "display": "subsetted"
        })));
        let items: Vec<&str> = tags.iter().map(|t| t.get()).collect();
        let array = serde_json::value::RawValue::from_string(format!("[{}]", items.join(",")))
            .expect("an array of JSON values is JSON");
        meta.set("tag", array);
        resource.set("meta", meta.into_raw());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_checked_against_the_definitions() {
        assert!(ElementsFilter::check("status").is_ok());
        assert!(ElementsFilter::check("Patient.name").is_ok());
        assert!(ElementsFilter::check("Observation.value").is_ok());
        assert!(ElementsFilter::check("Patient.status")
            .unwrap_err()
            .0
            .contains("not a top-level element of Patient"));
        assert!(ElementsFilter::check("Patient.name.family").is_err());
        assert!(ElementsFilter::check("nonsense").is_err());
        assert!(ElementsFilter::check("Foo.id").is_err());
    }

    #[test]
    fn typed_entries_apply_to_their_type_only() {
        let f = ElementsFilter::new(&["Patient.name"]);
        assert!(f.for_type("Observation").is_none());
        let keep = f.for_type("Patient").unwrap();
        assert!(keep.contains(&"name".to_string()));
        let f = ElementsFilter::new(&["identifier"]);
        assert!(f.for_type("Observation").is_some());
    }

    #[test]
    fn subset_keeps_listed_required_and_choice_forms_and_tags() {
        let text = json!({
            "resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"},
            "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
            "valueQuantity": {"value": 1}, "_status": {"extension": []}, "note": [{"text": "n"}]
        })
        .to_string()
        .replace("\"value\":1}", "\"value\":1.50}");
        let f = ElementsFilter::new(&["Observation.value"]);
        let keep = f.for_type("Observation").unwrap();
        let mut raw = RawObject::parse(&text).unwrap();
        subset(&mut raw, "Observation", &keep);
        let out = raw.to_text();
        assert!(out.contains(r#""valueQuantity":{"value":1.50}"#), "{out}");
        let o: Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&String> = o.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "code",
                "valueQuantity",
                "_status"
            ]
        );
        assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(o["meta"]["versionId"], "1");
    }
}
