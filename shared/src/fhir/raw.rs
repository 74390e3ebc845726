//! Resource JSON edited without re-serialising what is only copied.
//!
//! FHIR requires a decimal's precision to be kept (`1.50` is not `1.5`, `0.0` is not `0`), and
//! re-serialising a parsed resource is where that, and the members' order and spacing, can go
//! wrong. So the loader stores each resource as the text it received (whitespace removed), and
//! the few edits the service makes (stamping `meta`, `_elements`, rewriting a Bundle's
//! `urn:uuid:` references) work on [`RawObject`]s: members in order, each value kept as its own
//! text.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's members in order, each value as its text.
#[derive(Debug, Default)]
pub struct RawObject(Vec<(String, Box<RawValue>)>);

impl RawObject {
    /// Parses a JSON object (anything else is an error).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let obj = de.deserialize_map(MembersVisitor)?;
        de.end()?;
        Ok(obj)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Replaces the value of `key`, or appends the member.
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// Sets `key` to `value` (serialised) when absent.
    pub fn set_if_absent(&mut self, key: &str, value: &serde_json::Value) {
        if self.get(key).is_none() {
            self.set(key, to_raw(value));
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(k, _)| keep(k));
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The object as compact JSON: each value exactly as it was parsed or set.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(
            self.0
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum(),
        );
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }

    pub fn into_raw(self) -> Box<RawValue> {
        RawValue::from_string(self.to_text()).expect("a RawObject is JSON")
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = RawObject;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            members.push((k, v));
        }
        Ok(RawObject(members))
    }
}

/// A value as raw JSON text.
pub fn to_raw(value: &serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("a Value serialises to JSON")
}

/// The elements of a JSON array, each as its text.
pub fn array_items(raw: &RawValue) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// `text` without the whitespace between tokens (strings are copied byte for byte), so that a
/// resource from a pretty-printed Bundle is one ndjson line. Numbers keep their exact text.
pub fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Rebuilds `raw` with every string value of a `reference` member replaced by `map(s)` where
/// that gives one; everything else is copied as it was.
pub fn rewrite_references(
    raw: &RawValue,
    map: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<RawValue>, serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let mut obj = RawObject::parse(text)?;
            for (k, v) in obj.0.iter_mut() {
                if k == "reference" {
                    if let Ok(s) = serde_json::from_str::<String>(v.get()) {
                        if let Some(new) = map(&s) {
                            *v = to_raw(&serde_json::Value::String(new));
                        }
                    }
                } else {
                    *v = rewrite_references(v, map)?;
                }
            }
            Ok(obj.into_raw())
        }
        Some(b'[') => {
            let items = array_items(raw)?
                .iter()
                .map(|item| rewrite_references(item, map).map(|r| r.get().to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RawValue::from_string(format!("[{}]", items.join(",")))
                .expect("an array of JSON values is JSON"))
        }
        _ => Ok(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_order_survive_an_edit() {
        let text = r#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"x":0.0,"y":11266.736000000003,"z":1e5}"#;
        let mut obj = RawObject::parse(text).unwrap();
        obj.set_if_absent("meta", &serde_json::json!({"versionId": "1"}));
        assert_eq!(
            obj.to_text(),
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"x":0.0,"y":11266.736000000003,"z":1e5,"meta":{"versionId":"1"}}"#
        );
    }

    #[test]
    fn minify_keeps_strings_and_numbers() {
        let pretty = "{\n  \"a\" : [ 1.50 , 2 ],\n  \"b\": \"x \\\" y\\n\"\n}";
        assert_eq!(minify(pretty), r#"{"a":[1.50,2],"b":"x \" y\n"}"#);
    }

    #[test]
    fn references_are_rewritten_only_in_reference_members() {
        let raw = RawValue::from_string(
            r#"{"subject":{"reference":"urn:uuid:1"},"identifier":[{"value":"urn:uuid:1"}],"v":2.10}"#.into(),
        )
        .unwrap();
        let out = rewrite_references(&raw, &|s| {
            (s == "urn:uuid:1").then(|| "Patient/1".to_string())
        })
        .unwrap();
        assert_eq!(
            out.get(),
            r#"{"subject":{"reference":"Patient/1"},"identifier":[{"value":"urn:uuid:1"}],"v":2.10}"#
        );
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(RawObject::parse("[1]").is_err());
        assert!(RawObject::parse("{} x").is_err());
    }
}
