//! Resources as the evaluator reads them: a JSON tree whose strings and member names borrow from
//! the text it was parsed from, whose objects keep their members in order in a plain vector, and
//! whose numbers keep their text. Reading a resource this way costs about half of building a
//! `serde_json::Value` (no `String` per member name and string, no hash table per object), and
//! views only read resources.
//!
//! The JSON is read by serde_json's parser (so what it refuses, [`Json::parse`] refuses), and a
//! [`Json`] converts from and to `serde_json::Value` exactly.

use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON value borrowing from the text it was read from (or from a `serde_json::Value`).
#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON number, exactly as written: an integer that fits 64 bits, or the number's text.
#[derive(Clone, Debug)]
pub enum Number<'a> {
    I64(i64),
    U64(u64),
    /// Any other number (`1.50`, `1e3`, an integer beyond 64 bits), as written.
    Text(Cow<'a, str>),
}

/// A JSON object's members, in the order they were written. Members are found by scanning
/// (resources' objects are small: a Coding has three), or, in an object of 32 members or more,
/// through a hash index (so that no lookup in a hostile object of very many members costs more
/// than a hash).
#[derive(Clone, Debug, Default)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
    // Boxed so that an `Object`, and every `Json`, stays 32 bytes: the index is built only for
    // objects of 32 members or more.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<Cow<'a, str>, usize>>>,
}

/// The member name serde_json (with `arbitrary_precision`) hands a number's text under, as a
/// one-member map; `serde_json::Value` reads numbers the same way.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'a> Json<'a> {
    /// Reads one JSON value from `text`, refusing what `serde_json::from_slice` refuses.
    pub fn parse(text: &'a [u8]) -> serde_json::Result<Json<'a>> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = de::Deserializer::deserialize_any(&mut de, JsonVisitor)?;
        de.end()?;
        Ok(value)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(m) => m.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Json::String(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The same value as a `serde_json::Value` (numbers keep their text).
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n.to_value(),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(a) => Value::Array(a.iter().map(Json::to_value).collect()),
            Json::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A value that owns its data (for constants that outlive the text they came from).
    pub fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(match n {
                Number::I64(i) => Number::I64(i),
                Number::U64(u) => Number::U64(u),
                Number::Text(t) => Number::Text(Cow::Owned(t.into_owned())),
            }),
            Json::String(s) => Json::String(Cow::Owned(s.into_owned())),
            Json::Array(a) => Json::Array(a.into_iter().map(Json::into_owned).collect()),
            Json::Object(m) => {
                let mut out = ObjectBuilder::default();
                for (k, v) in m.members {
                    out.insert(Cow::Owned(k.into_owned()), v.into_owned());
                }
                Json::Object(out.finish())
            }
        }
    }
}

impl<'a> From<&'a Value> for Json<'a> {
    fn from(v: &'a Value) -> Json<'a> {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(if let Some(u) = n.as_u64() {
                Number::U64(u)
            } else if let Some(i) = n.as_i64() {
                Number::I64(i)
            } else {
                Number::Text(Cow::Borrowed(n.as_str()))
            }),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            Value::Object(m) => {
                let mut out = ObjectBuilder::default();
                for (k, v) in m {
                    out.insert(Cow::Borrowed(k.as_str()), Json::from(v));
                }
                Json::Object(out.finish())
            }
        }
    }
}

impl Number<'_> {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::I64(i) => Some(*i),
            Number::U64(u) => i64::try_from(*u).ok(),
            Number::Text(t) => t.parse().ok(),
        }
    }

    /// Whether the number is an integer (of any size) as written.
    pub fn is_integer(&self) -> bool {
        match self {
            Number::I64(_) | Number::U64(_) => true,
            Number::Text(t) => t.parse::<i64>().is_ok() || t.parse::<u64>().is_ok(),
        }
    }

    /// The number's text (`1.50` stays `1.50`).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Number::I64(i) => Cow::Owned(i.to_string()),
            Number::U64(u) => Cow::Owned(u.to_string()),
            Number::Text(t) => Cow::Borrowed(t),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Number::I64(i) => Value::from(*i),
            Number::U64(u) => Value::from(*u),
            Number::Text(t) => t
                .parse::<serde_json::Number>()
                .map_or(Value::Null, Value::Number),
        }
    }
}

/// Numbers are equal as `serde_json::Number`s are: when they are written the same.
impl PartialEq for Number<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Number::Text(a), Number::Text(b)) => a == b,
            _ => self.text() == other.text(),
        }
    }
}

impl<'a> Object<'a> {
    /// The member `key`.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match &self.index {
            Some(index) => index.get(key).map(|&i| &self.members[i].1),
            None => self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.members.iter().map(|(k, v)| (&**k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| &**k)
    }
}

/// An object as it is read: a repeated member name keeps its first place and takes the last
/// value (as `serde_json::Value` reads it). Names are compared by scanning while the object is
/// small, then through a hash index (kept in the [`Object`]), so that an object of very many
/// members (hostile input) costs linear time to read, not quadratic.
#[derive(Default)]
pub(crate) struct ObjectBuilder<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
    index: Option<HashMap<Cow<'a, str>, usize>>,
}

impl<'a> ObjectBuilder<'a> {
    /// Members up to which names are compared by scanning.
    const SCAN: usize = 32;

    pub(crate) fn insert(&mut self, key: Cow<'a, str>, value: Json<'a>) {
        if let Some(index) = &mut self.index {
            match index.entry(key) {
                Entry::Occupied(e) => self.members[*e.get()].1 = value,
                Entry::Vacant(e) => {
                    self.members.push((e.key().clone(), value));
                    e.insert(self.members.len() - 1);
                }
            }
            return;
        }
        if let Some((_, v)) = self.members.iter_mut().find(|(k, _)| *k == key) {
            *v = value;
            return;
        }
        self.members.push((key, value));
        if self.members.len() == Self::SCAN {
            let index = self
                .members
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.index = Some(index);
        }
    }

    pub(crate) fn finish(self) -> Object<'a> {
        Object {
            members: self.members,
            index: self.index.map(Box::new),
        }
    }
}

/// Objects are equal when they have the same members, in any order.
impl PartialEq for Object<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// Reads any JSON value into a [`Json`].
pub(crate) struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::U64(u)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::I64(i)))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Json<'de>, E> {
        // Only without `arbitrary_precision` (numbers then arrive as their text, below).
        serde_json::Number::from_f64(f)
            .map(|n| Json::Number(Number::Text(Cow::Owned(n.to_string()))))
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut out = ObjectBuilder::default();
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if first && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                return Ok(Json::Number(Number::Text(Cow::Owned(text))));
            }
            first = false;
            let value = map.next_value_seed(JsonSeed)?;
            out.insert(key, value);
        }
        Ok(Json::Object(out.finish()))
    }
}

/// A JSON value, as a seed.
pub(crate) struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Json<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// A member name, borrowed when it has no escapes.
pub(crate) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_as_serde_json_reads_and_converts_back_exactly() {
        let text =
            br#"{"a":1.50,"b":[1,-2,18446744073709551615,123456789012345678901234567890,1e3],
            "c":"x\"y","d":null,"e":true,"f":{"g":[]},"a":0.10}"#;
        let j = Json::parse(text).expect("parse");
        let v: Value = serde_json::from_slice(text).expect("serde_json");
        assert_eq!(j.to_value(), v);
        assert_eq!(
            serde_json::to_string(&j.to_value()).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        // A repeated name keeps its place and the last value.
        assert_eq!(
            j.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e", "f"]
        );
        let Some(Json::Number(n)) = j.get("a") else {
            panic!("a number")
        };
        assert_eq!(n.text(), "0.10");
        assert_eq!(Json::from(&v), j);
        // Strings without escapes borrow from the text.
        let j = Json::parse(br#"{"k":"plain"}"#).unwrap();
        assert!(matches!(
            j.get("k"),
            Some(Json::String(Cow::Borrowed("plain")))
        ));
    }

    #[test]
    fn a_repeated_name_in_a_large_object_keeps_its_place_and_the_last_value() {
        let mut text = String::from("{");
        for i in 0..40 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k3\":\"again\",\"k39\":\"last\",\"z\":true}");
        let j = Json::parse(text.as_bytes()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j.to_value(), v);
        let keys: Vec<&str> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 41);
        assert_eq!((keys[3], keys[39], keys[40]), ("k3", "k39", "z"));
        assert_eq!(j.get("k3").and_then(Json::as_str), Some("again"));
        assert_eq!(j.get("k39").and_then(Json::as_str), Some("last"));
        // Many members (and many repeats) read in linear time: scanning for every name would
        // take on the order of 10^10 comparisons here.
        let mut text = String::from("{");
        for i in 0..200_000 {
            text.push_str(&format!("\"m{i}\":0,\"m{}\":1,", i / 2));
        }
        text.push_str("\"end\":0}");
        let j = Json::parse(text.as_bytes()).unwrap();
        assert_eq!(j.as_object().unwrap().len(), 200_001);
        assert_eq!(j.get("m0").map(Json::to_value), Some(json!(1)));
        assert_eq!(j.get("m199999").map(Json::to_value), Some(json!(0)));
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [&b"{\"a\":1"[..], b"[1,]", b"{} x", b"nul", b"\"\\u12\""] {
            assert!(Json::parse(bad).is_err());
            assert!(serde_json::from_slice::<Value>(bad).is_err());
        }
    }

    #[test]
    fn objects_are_equal_in_any_order_and_numbers_as_written() {
        let a = json!({"x": 1, "y": [1.5]});
        let b = json!({"y": [1.5], "x": 1});
        assert_eq!(Json::from(&a), Json::from(&b));
        assert_ne!(
            Json::parse(b"1.0").unwrap(),
            Json::parse(b"1").unwrap(),
            "serde_json::Number compares as written"
        );
        assert_eq!(Json::parse(b"-0").unwrap(), Json::parse(b"-0").unwrap());
    }
}
