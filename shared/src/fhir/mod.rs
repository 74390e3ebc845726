//! FHIR R4 knowledge the exporter needs: resource types, the Patient compartment, references,
//! OperationOutcome and instants.

pub mod compartment;
pub mod compartment_table;
pub mod elements;
pub mod instant;
pub mod outcome;
pub mod raw;
pub mod resource_types;
pub mod scan;
pub mod search;
pub mod search_table;
pub mod search_types;
pub mod stamp;

pub use outcome::OperationOutcome;
