//! FHIR Bundles as input: their entries (resources to store, DELETEs), with `urn:uuid:`
//! references rewritten to the ids the entries get.

use std::collections::HashMap;

use serde_json::Value;

use super::{parse_type_id, Refused};
use crate::fhir::raw::{self, RawObject};

/// One entry of a Bundle: a resource to store, or a `DELETE Type/id` request.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleEntry {
    /// The resource's text to store (one line; the loader reads it with `fhir::scan`).
    Resource {
        text: String,
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
        let (Some(resource), Some(Ok(mut raw_resource))) = (entry.get("resource"), raw_resource)
        else {
            resources.push(Err(Refused("entry without a resource".into())));
            continue;
        };
        let full_url = entry.get("fullUrl").and_then(Value::as_str).unwrap_or("");
        // A resource without an id takes it from a `urn:uuid:` fullUrl.
        let id = match resource.get("id") {
            Some(id) => id.as_str().map(str::to_string),
            None => full_url.strip_prefix("urn:uuid:").map(|uuid| {
                raw_resource.set_if_absent("id", &Value::String(uuid.to_string()));
                uuid.to_string()
            }),
        };
        if let (Some(t), Some(id)) = (resource.get("resourceType").and_then(Value::as_str), id) {
            if !full_url.is_empty() {
                full_urls.insert(full_url.to_string(), format!("{t}/{id}"));
            }
        }
        resources.push(Ok(BundleEntry::Resource {
            text: raw_resource.to_text(),
        }));
    }
    let lookup = |s: &str| full_urls.get(s).cloned();
    for entry in resources.iter_mut().flatten() {
        if let BundleEntry::Resource { text } = entry {
            if let Ok(raw) = serde_json::value::RawValue::from_string(std::mem::take(text)) {
                let rewritten = raw::rewrite_references(&raw, &lookup).map_err(bad)?;
                *text = raw::minify(rewritten.get());
            }
        }
    }
    Ok(resources)
}
