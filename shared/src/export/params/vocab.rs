//! The closed vocabularies of the kick-off parameters.

use serde::{Deserialize, Serialize};

/// `_outputFormat` values we accept; all mean ndjson.
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// `_outputFormat`: the IG's three names of ndjson (kept as the client wrote it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OutputFormat {
    #[default]
    #[serde(rename = "application/fhir+ndjson")]
    FhirNdjson,
    #[serde(rename = "application/ndjson")]
    ApplicationNdjson,
    #[serde(rename = "ndjson")]
    Ndjson,
}

impl OutputFormat {
    pub fn parse(value: &str) -> Option<OutputFormat> {
        match value {
            "application/fhir+ndjson" => Some(OutputFormat::FhirNdjson),
            "application/ndjson" => Some(OutputFormat::ApplicationNdjson),
            "ndjson" => Some(OutputFormat::Ndjson),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::FhirNdjson => "application/fhir+ndjson",
            OutputFormat::ApplicationNdjson => "application/ndjson",
            OutputFormat::Ndjson => "ndjson",
        }
    }
}

/// `includeAssociatedData` values (IG code system include-associated-data).
pub const LATEST_PROVENANCE: &str = "LatestProvenanceResources";
pub const RELEVANT_PROVENANCE: &str = "RelevantProvenanceResources";

/// What `includeAssociatedData` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssociatedData {
    /// The latest Provenance of each exported resource.
    #[serde(rename = "LatestProvenanceResources")]
    LatestProvenance,
    /// The Provenance relevant to the exported resources.
    #[serde(rename = "RelevantProvenanceResources")]
    RelevantProvenance,
}

impl AssociatedData {
    pub fn parse(value: &str) -> Option<AssociatedData> {
        match value {
            LATEST_PROVENANCE => Some(AssociatedData::LatestProvenance),
            RELEVANT_PROVENANCE => Some(AssociatedData::RelevantProvenance),
            _ => None,
        }
    }
}

/// What `organizeOutputBy` can ask for (IG v3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrganizeBy {
    /// Blocks of Patient compartments.
    Patient,
}
