//! Parsing only what views read. A view reads a resource through the member names of its
//! expressions, so the top-level elements none of them names (a Observation's `meta`,
//! `category`, `component`, a Patient's `text`) need not be read into the tree: they are
//! skipped over as the JSON is read.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::fhirpath::reads::Reads;
use crate::json::{Json, JsonSeed, ObjectBuilder};
use crate::View;

/// The top-level elements a set of views can read (or all of them).
#[derive(Debug, Clone)]
pub struct Projection {
    /// Member names the views navigate; `None` when one of them may read the whole resource.
    names: Option<BTreeSet<Box<str>>>,
}

impl Projection {
    /// What `views` read together.
    pub fn of<'v>(views: impl IntoIterator<Item = &'v View>) -> Projection {
        let mut reads = Reads::default();
        for v in views {
            v.add_reads(&mut reads);
        }
        Projection {
            names: (!reads.whole).then_some(reads.names),
        }
    }

    /// Every element (the resource parsed as a whole).
    pub fn whole() -> Projection {
        Projection { names: None }
    }

    /// Whether every element is kept.
    pub fn is_whole(&self) -> bool {
        self.names.is_none()
    }

    /// Whether the top-level element `key` is kept: `resourceType` and `id` always; a name an
    /// expression navigates, a choice element of it (`value` → `valueQuantity`), and the
    /// primitive extension sibling of either (`_birthDate`).
    pub fn keeps(&self, key: &str) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        if key == "resourceType" || key == "id" {
            return true;
        }
        let key = key.strip_prefix('_').unwrap_or(key);
        if names.contains(key) {
            return true;
        }
        // A choice element: the longest name that `key` starts with, followed by a type name.
        (1..key.len()).any(|i| {
            key.is_char_boundary(i)
                && key.as_bytes()[i].is_ascii_uppercase()
                && names.contains(&key[..i])
        })
    }

    /// `json` (one resource) as a tree holding the elements kept. The same errors as
    /// [`Json::parse`] (and `serde_json::from_slice`), and a value that is not an object is
    /// refused (unless the projection is whole).
    pub fn parse<'j>(&self, json: &'j [u8]) -> serde_json::Result<Json<'j>> {
        if self.is_whole() {
            return Json::parse(json);
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let value = de::Deserializer::deserialize_any(&mut de, Resource(self))?;
        de.end()?;
        Ok(value)
    }
}

/// The resource: an object of which only the kept members are read.
struct Resource<'p>(&'p Projection);

impl<'de> Visitor<'de> for Resource<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a resource)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut out = ObjectBuilder::default();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some(k) => {
                    let v = map.next_value_seed(JsonSeed)?;
                    out.insert(k, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Json::Object(out.finish()))
    }
}

/// A member name: kept (borrowed when it has no escapes), otherwise only looked at.
struct Key<'p>(&'p Projection);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(self.0.keeps(s).then_some(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.0.keeps(s).then(|| Cow::Owned(s.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn view(json: Value) -> View {
        View::from_json(&json).expect("view")
    }

    #[test]
    fn a_flat_view_keeps_the_elements_it_names_and_their_choices() {
        let v = view(json!({
            "resource": "Observation",
            "where": [{"path": "status = 'final'"}],
            "select": [{"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "code", "path": "code.coding.where(system = 'http://loinc.org').code.first()"}
            ]}]
        }));
        let p = Projection::of([&v]);
        assert!(!p.is_whole());
        for k in [
            "resourceType",
            "id",
            "status",
            "subject",
            "valueQuantity",
            "_valueString",
            "code",
        ] {
            assert!(p.keeps(k), "{k}");
        }
        for k in [
            "meta",
            "category",
            "component",
            "text",
            "values",
            "effectiveDateTime",
        ] {
            assert!(!p.keeps(k), "{k}");
        }
        let text = br#"{"resourceType":"Observation","id":"o1","meta":{"profile":["x"]},
            "status":"final","category":[{"text":"c"}],"code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]},
            "subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.50,"unit":"kg"},
            "component":[{"valueQuantity":{"value":2}}]}"#;
        let pruned = p.parse(text).expect("parse");
        let whole: Value = serde_json::from_slice(text).expect("whole");
        assert_eq!(
            pruned.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "resourceType",
                "id",
                "status",
                "code",
                "subject",
                "valueQuantity"
            ]
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        v.append_json_rows(&pruned, &mut a).unwrap();
        v.append_rows(&whole, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            pruned.to_value()["valueQuantity"]["value"].to_string(),
            "1.50"
        );
    }

    #[test]
    fn this_resource_and_calls_on_the_focus_read_everything() {
        for path in [
            "$this.id",
            "%resource.id",
            "first().id",
            "where(status = 'x').id",
        ] {
            let v = view(json!({
                "resource": "Observation",
                "select": [{"column": [{"name": "c", "path": path}]}]
            }));
            assert!(Projection::of([&v]).is_whole(), "{path}");
        }
        let v = view(json!({
            "resource": "Patient",
            "select": [{"column": [{"name": "c", "path": "extension('http://x').value.ofType(string)"}]}]
        }));
        let p = Projection::of([&v]);
        assert!(p.keeps("extension") && !p.keeps("name"));
    }

    #[test]
    fn bad_json_is_refused_as_serde_json_refuses_it() {
        let v = view(json!({
            "resource": "Patient",
            "select": [{"column": [{"name": "g", "path": "gender"}]}]
        }));
        let p = Projection::of([&v]);
        assert!(p
            .parse(br#"{"resourceType":"Patient","text":{"div":"x"}"#)
            .is_err());
        assert!(p.parse(br#"{"resourceType":"Patient"} x"#).is_err());
        assert!(p.parse(b"[1]").is_err());
    }
}
