//! The R4 structure model (generated into `model_table.rs` by `tools/gen_model.py`): which
//! elements each resource, data type and backbone element has, and their types. Used when a
//! ViewDefinition is read, to know the types of element paths (column types, `where` paths that
//! cannot be boolean, operands of the wrong type) and to warn about elements that do not exist.

use crate::model_table::MODEL;
use crate::types::PRIMITIVE_TYPES;

/// An element: name (a choice element without `[x]`), its FHIR types (for a backbone element,
/// its path, which is also its entry in the model), and whether it repeats (max > 1).
pub(crate) struct Elem(
    pub(crate) &'static str,
    pub(crate) &'static [&'static str],
    pub(crate) bool,
);

/// What the model says about `type.name`.
pub(crate) enum Lookup {
    /// The element's types and whether it repeats.
    Found(&'static [&'static str], bool),
    /// The type has no such element.
    Missing,
    /// The type is not in the model (an R5 type, `Resource`): nothing is known.
    Unknown,
}

fn elements(t: &str) -> Option<&'static [Elem]> {
    MODEL
        .binary_search_by(|(n, _)| (*n).cmp(t))
        .ok()
        .map(|i| MODEL[i].1)
}

/// The interned name of a type the model knows (`Patient`, `HumanName`, `Patient.contact`).
pub(crate) fn type_name(t: &str) -> Option<&'static str> {
    MODEL
        .binary_search_by(|(n, _)| (*n).cmp(t))
        .ok()
        .map(|i| MODEL[i].0)
}

static STRING: &[&str] = &["string"];
static CODE: &[&str] = &["code"];
static EXTENSION: &[&str] = &["Extension"];

pub(crate) fn child(t: &str, name: &str) -> Lookup {
    if PRIMITIVE_TYPES.contains(&t) {
        return match name {
            "id" => Lookup::Found(STRING, false),
            "extension" => Lookup::Found(EXTENSION, true),
            _ => Lookup::Missing,
        };
    }
    match elements(t) {
        None => Lookup::Unknown,
        Some(els) => match els.iter().find(|e| e.0 == name) {
            Some(e) => Lookup::Found(e.1, e.2),
            None if name == "resourceType" && !t.contains('.') => Lookup::Found(CODE, false),
            None => Lookup::Missing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_sorted_and_knows_r4() {
        assert!(MODEL.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(matches!(
            child("Patient", "name"),
            Lookup::Found(["HumanName"], true)
        ));
        assert!(matches!(
            child("HumanName", "given"),
            Lookup::Found(["string"], true)
        ));
        assert!(matches!(
            child("Patient", "contact"),
            Lookup::Found(["Patient.contact"], true)
        ));
        assert!(matches!(
            child("Patient.contact", "name"),
            Lookup::Found(["HumanName"], false)
        ));
        assert!(matches!(child("Patient", "famly"), Lookup::Missing));
        assert!(matches!(
            child("Patient", "resourceType"),
            Lookup::Found(["code"], false)
        ));
        assert!(matches!(
            child("date", "extension"),
            Lookup::Found(["Extension"], true)
        ));
        assert!(matches!(child("R5Thing", "x"), Lookup::Unknown));
        // Choice elements and content references.
        match child("Observation", "value") {
            Lookup::Found(ts, false) => assert!(ts.contains(&"Quantity") && ts.contains(&"string")),
            _ => panic!("Observation.value"),
        }
        assert!(matches!(
            child("Questionnaire.item", "item"),
            Lookup::Found(["Questionnaire.item"], true)
        ));
    }
}

/// `model_table.rs` is what `tools/gen_model.py` makes of the R4 definitions, checked when a
/// directory holding profiles-resources.json and profiles-types.json is given in
/// `FHIR_R4_DEFINITIONS` (skipped otherwise, with a note).
#[cfg(test)]
mod generated {
    #[test]
    fn model_table_is_current() {
        let Some(dir) = std::env::var_os("FHIR_R4_DEFINITIONS") else {
            println!("SKIPPED: FHIR_R4_DEFINITIONS not set");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        if !dir.join("profiles-types.json").exists()
            || !dir.join("profiles-resources.json").exists()
        {
            println!("SKIPPED: no profiles-types.json and profiles-resources.json in {dir:?}");
            return;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gen_model.py");
        let status = std::process::Command::new("python3")
            .arg(script)
            .arg("--check")
            .arg("--fhir-dir")
            .arg(&dir)
            .status()
            .expect("python3 runs");
        assert!(status.success(), "sof/src/model_table.rs is not current");
    }
}
