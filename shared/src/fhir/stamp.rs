//! Stamping a stored resource's `meta.versionId` and `meta.lastUpdated` where they are absent,
//! editing the text's members (`raw`) and keeping every other byte.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::instant::format_instant;
use super::raw::RawObject;
use super::scan::Meta;

/// What is stored of a resource: its text with `meta.versionId` and `meta.lastUpdated` set
/// where absent. Written into the COPY rows as it is, in pieces: a text stored as received, or
/// with a `meta` appended, is not copied into a String of its own first.
#[derive(Debug)]
pub enum Stamped<'a> {
    /// The text as received.
    Same(&'a str),
    /// The text without its closing brace, then a `,"meta":{…}}` member that closes it.
    Appended(&'a str, std::borrow::Cow<'a, str>),
    /// The text rewritten (a `meta` that lacked one of the two).
    Rewritten(String),
}

impl Stamped<'_> {
    /// The text in two pieces (the second empty unless a `meta` was appended).
    pub fn pieces(&self) -> (&str, &str) {
        match self {
            Stamped::Same(text) => (text, ""),
            Stamped::Appended(head, meta) => (head, meta),
            Stamped::Rewritten(text) => (text, ""),
        }
    }

    /// The text as one String.
    pub fn to_text(&self) -> String {
        let (head, tail) = self.pieces();
        [head, tail].concat()
    }
}

/// `,"meta":{"versionId":…,"lastUpdated":…}}`: a `meta` member and the closing brace.
pub fn meta_member(version: i64, now: &DateTime<Utc>) -> Result<String, serde_json::Error> {
    Ok(format!(
        ",\"meta\":{{\"versionId\":{},\"lastUpdated\":{}}}}}",
        serde_json::to_string(&version.to_string())?,
        serde_json::to_string(&format_instant(now))?
    ))
}

/// `text` with `meta.versionId` and `meta.lastUpdated` set where absent; every other byte of
/// the resource (numbers above all) as it was. `first_meta`: [`meta_member`] of version 1.
pub fn stamp_meta<'a>(
    text: &'a str,
    meta: Meta,
    version: i64,
    now: &DateTime<Utc>,
    first_meta: &'a str,
) -> Result<Stamped<'a>, serde_json::Error> {
    match meta {
        Meta::Complete => return Ok(Stamped::Same(text)),
        // Appended as the last member, as `RawObject::set` would, without parsing the text
        // again (the object is one line of JSON ending with its closing brace).
        Meta::Absent if text.ends_with('}') && text.len() > 2 => {
            let member = if version == 1 {
                std::borrow::Cow::Borrowed(first_meta)
            } else {
                std::borrow::Cow::Owned(meta_member(version, now)?)
            };
            return Ok(Stamped::Appended(&text[..text.len() - 1], member));
        }
        _ => {}
    }
    let mut resource = RawObject::parse(text)?;
    let mut meta = match resource.get("meta") {
        Some(m) => match RawObject::parse(m.get()) {
            Ok(m) => m,
            // A `meta` that is not an object is kept as it was.
            Err(_) => return Ok(Stamped::Rewritten(resource.to_text())),
        },
        None => RawObject::default(),
    };
    let has_version = meta.get("versionId").is_some();
    let has_updated = meta.get("lastUpdated").is_some();
    if has_version && has_updated {
        return Ok(Stamped::Same(text));
    }
    meta.set_if_absent("versionId", &Value::String(version.to_string()));
    meta.set_if_absent("lastUpdated", &Value::String(format_instant(now)));
    resource.set("meta", meta.into_raw());
    Ok(Stamped::Rewritten(resource.to_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_adds_only_what_meta_lacks_and_keeps_every_other_byte() {
        let now: DateTime<Utc> = "2026-12-03T05:04:03.123Z".parse().unwrap();
        let first = meta_member(1, &now).unwrap();
        let stamp = |text: &str, meta, version| {
            stamp_meta(text, meta, version, &now, &first)
                .unwrap()
                .to_text()
        };
        let text = r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":1.50}}"#;
        assert_eq!(
            stamp(text, Meta::Absent, 1),
            r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":1.50},"meta":{"versionId":"1","lastUpdated":"2026-12-03T05:04:03.123Z"}}"#
        );
        assert!(stamp(text, Meta::Absent, 7).contains(r#""meta":{"versionId":"7","#));
        let complete = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"}}"#;
        assert_eq!(stamp(complete, Meta::Complete, 4), complete);
        assert_eq!(
            stamp(
                r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3"},"n":1e2}"#,
                Meta::Partial,
                4
            ),
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2026-12-03T05:04:03.123Z"},"n":1e2}"#
        );
    }
}
