//! OperationOutcome, the body of every error response and of every error[] ndjson line.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub severity: Severity,
    /// An IssueType code: invalid, not-found, not-supported, exception, transient, processing, ...
    pub code: &'static str,
    pub diagnostics: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    resource_type: &'static str,
    pub issue: Vec<Issue>,
}

impl OperationOutcome {
    pub fn new(severity: Severity, code: &'static str, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            resource_type: "OperationOutcome",
            issue: vec![Issue {
                severity,
                code,
                diagnostics: diagnostics.into(),
            }],
        }
    }

    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, diagnostics)
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Information, "informational", diagnostics)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}"#
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_outcome_serializes_as_fhir() {
        let v: serde_json::Value =
            serde_json::from_str(&OperationOutcome::error("invalid", "bad _type").to_json())
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"resourceType":"OperationOutcome","issue":[
                {"severity":"error","code":"invalid","diagnostics":"bad _type"}]})
        );
    }
}
