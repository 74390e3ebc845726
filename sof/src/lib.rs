//! SQL on FHIR v2 ViewDefinition evaluation.
//!
//! A ViewDefinition is read and validated once with [`View::from_json`] (all FHIRPath
//! expressions are parsed to an AST and checked there), then applied to any number of resources
//! with [`View::rows`] or, without an allocation per row, [`View::append_rows`] (or
//! [`View::json_rows`] and [`View::append_json_rows`] for resources read with [`Json::parse`] or
//! [`Projection::parse`]).
//!
//! ```
//! use serde_json::json;
//!
//! let view = sof::ViewDefinition::from_json(&json!({
//!     "resourceType": "ViewDefinition",
//!     "resource": "Patient",
//!     "select": [{
//!         "column": [{"name": "id", "path": "getResourceKey()"}],
//!         "select": [{
//!             "forEachOrNull": "name",
//!             "column": [{"name": "family", "path": "family", "type": "string"}]
//!         }]
//!     }]
//! }))?;
//! let names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
//! assert_eq!(names, ["id", "family"]);
//!
//! let rows = view.rows(&json!({
//!     "resourceType": "Patient", "id": "p1",
//!     "name": [{"family": "Smith"}, {"family": "Jones"}]
//! }))?;
//! assert_eq!(rows, vec![vec![json!("p1"), json!("Smith")], vec![json!("p1"), json!("Jones")]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Types are checked against the R4 structure model as far as paths allow (a `where` path that
//! cannot be boolean is refused when the view is read); probable mistakes that FHIRPath allows
//! (an element that does not exist) are [`View::warnings`]. What cannot be known before data is
//! seen (a column path giving several values without `collection: true`, a value of a choice
//! element that turns out to be of the wrong type) is an [`EvalError`] naming the element of the
//! ViewDefinition.

mod decimal;
mod fhirpath;
mod json;
mod model;
#[rustfmt::skip]
mod model_table;
mod projection;
mod types;
mod view;

pub use json::{Json, Number, Object};
pub use projection::Projection;
pub use types::is_r4_resource_type;
pub use view::{Column, View, ViewDefinition};

/// A ViewDefinition that cannot be used, with the element at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", display(.element, .message))]
pub struct ViewError {
    element: String,
    message: String,
}

impl ViewError {
    pub(crate) fn new(element: String, message: String) -> ViewError {
        ViewError { element, message }
    }

    /// The element of the ViewDefinition at fault, as a FHIRPath-like path relative to the
    /// ViewDefinition (`select[1].column[0].path`, `constant[0].name`, `resource`); empty when
    /// the whole document is at fault. Suitable for an OperationOutcome `issue.expression`
    /// (prefixed with `ViewDefinition.`).
    pub fn element(&self) -> &str {
        &self.element
    }

    /// What is wrong, for a person (an OperationOutcome `issue.diagnostics`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The element as a FHIRPath expression from the resource, for an OperationOutcome
    /// `issue.expression`: `ViewDefinition.select[1].column[0].path` (`ViewDefinition` for the
    /// whole document).
    pub fn expression(&self) -> String {
        expression(&self.element)
    }
}

/// A resource the view could not be applied to, with the element of the ViewDefinition whose
/// expression failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", display(.element, .message))]
pub struct EvalError {
    element: String,
    message: String,
}

impl EvalError {
    pub(crate) fn new(element: String, message: String) -> EvalError {
        EvalError { element, message }
    }

    /// The element of the ViewDefinition whose expression failed (`select[0].column[2].path`).
    pub fn element(&self) -> &str {
        &self.element
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The element as a FHIRPath expression from the ViewDefinition resource
    /// (`ViewDefinition.select[0].column[2].path`).
    pub fn expression(&self) -> String {
        expression(&self.element)
    }
}

fn expression(element: &str) -> String {
    if element.is_empty() {
        "ViewDefinition".to_string()
    } else {
        format!("ViewDefinition.{element}")
    }
}

fn display(element: &str, message: &str) -> String {
    if element.is_empty() {
        message.to_string()
    } else {
        format!("{element}: {message}")
    }
}
