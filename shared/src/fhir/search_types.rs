//! The shapes of the generated search and element tables (`search_table.rs`).

use super::search_table::{ELEMENTS, SEARCH_PARAMS};

/// A SearchParameter's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchParamKind::Number => "number",
            SearchParamKind::Date => "date",
            SearchParamKind::String => "string",
            SearchParamKind::Token => "token",
            SearchParamKind::Reference => "reference",
            SearchParamKind::Composite => "composite",
            SearchParamKind::Quantity => "quantity",
            SearchParamKind::Uri => "uri",
            SearchParamKind::Special => "special",
        }
    }
}

/// One search parameter of one resource type. `paths` are element paths in the notation of
/// `infra/gen_search_tables.py`; empty when the server cannot evaluate the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParamDef {
    pub code: &'static str,
    pub kind: SearchParamKind,
    pub paths: &'static [&'static str],
}

impl SearchParamDef {
    pub fn supported(&self) -> bool {
        !self.paths.is_empty()
    }
}

/// One top-level element of a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementDef {
    /// The name (a choice element `value[x]` is `value`).
    pub name: &'static str,
    pub choice: bool,
    /// min >= 1 in the StructureDefinition.
    pub required: bool,
}

fn lookup<T>(table: &'static [(&'static str, &'static [T])], key: &str) -> &'static [T] {
    table
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .map(|i| table[i].1)
        .unwrap_or(&[])
}

/// The search parameter `code` of `resource_type`, or of every resource (`_id`, `_lastUpdated`…).
pub fn search_param(resource_type: &str, code: &str) -> Option<&'static SearchParamDef> {
    lookup(SEARCH_PARAMS, resource_type)
        .iter()
        .chain(lookup(SEARCH_PARAMS, "Resource"))
        .find(|p| p.code == code)
}

/// Every search parameter of `resource_type`, common ones last.
pub fn search_params(resource_type: &str) -> impl Iterator<Item = &'static SearchParamDef> {
    lookup(SEARCH_PARAMS, resource_type)
        .iter()
        .chain(lookup(SEARCH_PARAMS, "Resource"))
}

/// The top-level elements of `resource_type` (empty for an unknown type).
pub fn elements(resource_type: &str) -> &'static [ElementDef] {
    lookup(ELEMENTS, resource_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(SEARCH_PARAMS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ELEMENTS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(ELEMENTS.len(), 145);
    }

    #[test]
    fn observation_parameters_come_from_the_r4_definitions() {
        let code = search_param("Observation", "code").unwrap();
        assert_eq!(code.kind, SearchParamKind::Token);
        assert_eq!(code.paths, &["code"]);
        let date = search_param("Observation", "date").unwrap();
        assert_eq!(date.paths, &["effective[x]"]);
        assert!(search_param("Observation", "_lastUpdated").is_some());
        assert!(!search_param("Observation", "code-value-quantity")
            .unwrap()
            .supported());
        assert!(search_param("Observation", "nonsense").is_none());
    }

    #[test]
    fn required_elements_come_from_the_structure_definitions() {
        let required: Vec<&str> = elements("Observation")
            .iter()
            .filter(|e| e.required)
            .map(|e| e.name)
            .collect();
        assert_eq!(required, ["status", "code"]);
        assert!(elements("Observation")
            .iter()
            .any(|e| e.name == "value" && e.choice));
    }
}
