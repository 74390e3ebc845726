//! One pass over a resource's JSON text that finds what the loader stores beside it — its
//! resourceType and id, every reference with the path of keys it sits under, Provenance's
//! `recorded` and whether `meta` carries versionId and lastUpdated — without building a
//! `serde_json::Value` (a map and a string allocation for every member of every element: most
//! of the loader's CPU). Strings are borrowed from the text unless they hold escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// What `meta` holds of the two members the loader stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// No `meta` member.
    Absent,
    /// `meta` with both versionId and lastUpdated: the text is stored as it is.
    Complete,
    /// Any other `meta` (one of the two, neither, or not an object).
    Partial,
}

/// A resource as the loader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The top-level resourceType and id, when they are strings.
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Every `reference` member whose value is a string, with the keys of the objects above it
    /// joined by `/` (arrays add nothing: `participant/actor` for `participant[0].actor`).
    pub references: Vec<(String, String)>,
    /// The top-level `recorded` string (Provenance).
    pub recorded: Option<String>,
    pub meta: Meta,
}

/// Scans one JSON object. Errors: not JSON, not an object, trailing text, or a resourceType or
/// id given twice (which of the two counts would be up to each reader).
pub fn scan(text: &str) -> Result<Scanned, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut out = Scanned {
        resource_type: None,
        id: None,
        references: Vec::new(),
        recorded: None,
        meta: Meta::Absent,
    };
    de.deserialize_map(Top(&mut out))?;
    de.end()?;
    Ok(out)
}

/// The visitor methods of the values that are skipped: scalars.
macro_rules! skip_scalars {
    ($value:ty, $none:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$value, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<$value, E> {
            Ok($none)
        }
    };
}

/// The top-level object.
struct Top<'a>(&'a mut Scanned);

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut path = String::new();
        let (mut seen_type, mut seen_id) = (false, false);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "resourceType" | "id" => {
                    let (seen, slot) = if key == "id" {
                        (&mut seen_id, &mut self.0.id)
                    } else {
                        (&mut seen_type, &mut self.0.resource_type)
                    };
                    if std::mem::replace(seen, true) {
                        return Err(A::Error::custom(format!("{key} appears twice")));
                    }
                    *slot = string(map.next_value()?);
                }
                "recorded" => self.0.recorded = string(map.next_value()?),
                "reference" => {
                    if let Some(r) = string(map.next_value()?) {
                        self.0.references.push((String::new(), r));
                    }
                }
                _ => {
                    path.clear();
                    path.push_str(&key);
                    let mut meta = None;
                    let is_meta = key == "meta";
                    map.next_value_seed(Walk {
                        path: &mut path,
                        refs: &mut self.0.references,
                        meta: is_meta.then_some(&mut meta),
                    })?;
                    if is_meta {
                        self.0.meta = match meta {
                            Some((true, true)) => Meta::Complete,
                            _ => Meta::Partial,
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

fn string(value: Option<Str<'_>>) -> Option<String> {
    value.and_then(|s| s.0).map(Cow::into_owned)
}

/// Any value below the top level; `path` is the keys of the objects above it.
struct Walk<'a> {
    path: &'a mut String,
    refs: &'a mut Vec<(String, String)>,
    /// `meta` itself: set to (has versionId, has lastUpdated) when it is an object.
    meta: Option<&'a mut Option<(bool, bool)>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let base = self.path.len();
        let mut members = (false, false);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                // A reference is a string; anything else under the name is not followed.
                "reference" => {
                    if let Some(r) = string(map.next_value()?) {
                        self.refs.push((self.path[..base].to_string(), r));
                    }
                    continue;
                }
                "versionId" => members.0 = true,
                "lastUpdated" => members.1 = true,
                _ => {}
            }
            self.path.truncate(base);
            self.path.push('/');
            self.path.push_str(&key);
            map.next_value_seed(Walk {
                path: self.path,
                refs: self.refs,
                meta: None,
            })?;
        }
        self.path.truncate(base);
        if let Some(meta) = self.meta {
            *meta = Some(members);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Walk {
                path: self.path,
                refs: self.refs,
                meta: None,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    skip_scalars!((), ());
}

/// An object's key, borrowed from the text unless it holds escapes. (serde's `Cow<str>`
/// always allocates: a String for every key of every element was the loader's most frequent
/// allocation.)
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string value (borrowed where it has no escapes), or `Str(None)` for any other value,
/// which is skipped.
struct Str<'de>(Option<Cow<'de, str>>);

impl<'de> serde::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Some(Cow::Borrowed(s))))
            }

            fn visit_str<E>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Some(Cow::Owned(s.to_string()))))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Str<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Str<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Str(None))
            }

            skip_scalars!(Str<'de>, Str(None));
        }
        d.deserialize_any(V)
    }
}
