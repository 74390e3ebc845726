//! FHIR Bundles as input: their entries (resources to store, DELETEs), with `urn:uuid:`
//! references rewritten to the ids the entries get.

use std::collections::HashMap;

use serde_json::Value;

use super::{parse_type_id, Refused};
use crate::fhir::raw::{self, RawObject};

/// One entry of a Bundle: a resource to store, or a `DELETE Type/id` request.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleEntry {
    /// The resource's text to store (one line) and the same parsed.
    Resource {
        text: String,
        resource: Value,
    },
    Delete {
        resource_type: String,
        id: String,
    },
}

/// The resources of a Bundle, with `urn:uuid:` references rewritten to `Type/id` (Synthea
/// transaction Bundles link entries by fullUrl). Resources without an id take it from a
/// `urn:uuid:` fullUrl. `text` is the Bundle's JSON, `bundle` the same parsed: each resource's
/// text is taken from `text` (numbers exactly as written), edited only where references or the
/// id change, and put on one line.
pub fn bundle_resources(
    text: &str,
    bundle: Value,
) -> Result<Vec<Result<BundleEntry, Refused>>, Refused> {
    let Some(Value::Array(entries)) = bundle.get("entry").cloned() else {
        return Ok(Vec::new());
    };
    let bad = |e: serde_json::Error| format!("invalid Bundle: {e}");
    let raw_entries = match RawObject::parse(text).map_err(bad)?.get("entry") {
        Some(raw) => raw::array_items(raw).map_err(bad)?,
        None => Vec::new(),
    };
    if raw_entries.len() != entries.len() {
        return Err(Refused(
            "invalid Bundle: entry is not an array of entries".into(),
        ));
    }
    let mut resources = Vec::with_capacity(entries.len());
    let mut full_urls: HashMap<String, String> = HashMap::new();
    for (entry, raw_entry) in entries.into_iter().zip(raw_entries) {
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .unwrap_or("");
        if method.eq_ignore_ascii_case("DELETE") {
            let url = entry
                .pointer("/request/url")
                .and_then(Value::as_str)
                .unwrap_or("");
            resources.push(
                parse_type_id(url)
                    .map(|(resource_type, id)| BundleEntry::Delete { resource_type, id }),
            );
            continue;
        }
        let raw_resource = RawObject::parse(raw_entry.get())
            .ok()
            .and_then(|e| e.get("resource").map(|r| RawObject::parse(r.get())));
        let (Some(mut resource), Some(Ok(mut raw_resource))) =
            (entry.get("resource").cloned(), raw_resource)
        else {
            resources.push(Err(Refused("entry without a resource".into())));
            continue;
        };
        let full_url = entry.get("fullUrl").and_then(Value::as_str).unwrap_or("");
        if resource.get("id").is_none() {
            if let Some(uuid) = full_url.strip_prefix("urn:uuid:") {
                resource["id"] = Value::String(uuid.to_string());
                raw_resource.set_if_absent("id", &Value::String(uuid.to_string()));
            }
        }
        if let (Some(t), Some(id)) = (
            resource.get("resourceType").and_then(Value::as_str),
            resource.get("id").and_then(Value::as_str),
        ) {
            if !full_url.is_empty() {
                full_urls.insert(full_url.to_string(), format!("{t}/{id}"));
            }
        }
        resources.push(Ok(BundleEntry::Resource {
            text: raw_resource.to_text(),
            resource,
        }));
    }
    let lookup = |s: &str| full_urls.get(s).cloned();
    for entry in resources.iter_mut().flatten() {
        if let BundleEntry::Resource { text, resource } = entry {
            rewrite_references(resource, &full_urls);
            if let Ok(raw) = serde_json::value::RawValue::from_string(std::mem::take(text)) {
                let rewritten = raw::rewrite_references(&raw, &lookup).map_err(bad)?;
                *text = raw::minify(rewritten.get());
            }
        }
    }
    Ok(resources)
}

fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, map)),
        Value::Object(obj) => {
            for (k, v) in obj.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = v {
                        if let Some(target) = map.get(s.as_str()) {
                            *s = target.clone();
                        }
                    }
                } else {
                    rewrite_references(v, map);
                }
            }
        }
        _ => {}
    }
}
