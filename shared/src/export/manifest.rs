//! The completion manifest (IG v2.0.0 "Response - Complete Status").

use serde::Serialize;

use super::job::Job;
use crate::fhir::instant::format_instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Output,
    Error,
    Deleted,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Output => "output",
            FileKind::Error => "error",
            FileKind::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "output" => Some(FileKind::Output),
            "error" => Some(FileKind::Error),
            "deleted" => Some(FileKind::Deleted),
            _ => None,
        }
    }
}

/// A finished file of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub file_name: String,
    pub kind: FileKind,
    pub resource_type: String,
    pub object_key: String,
    /// A gzip copy of the object, where the store keeps one (S3).
    pub gzip_object_key: Option<String>,
    pub resource_count: i64,
    pub byte_count: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ManifestEntry {
    /// Absent for files organized by Patient (they hold every type).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    pub url: String,
    /// Absent for files organized by Patient (the IG's example lists only their url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub transaction_time: String,
    pub request: String,
    pub requires_access_token: bool,
    /// `Patient` when the kick-off asked for `organizeOutputBy=Patient` (IG v3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_organized_by: Option<crate::export::params::OrganizeBy>,
    pub output: Vec<ManifestEntry>,
    /// Always present, even when empty: real clients fail without it.
    pub error: Vec<ManifestEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<ManifestEntry>>,
}

/// The download URL of a file, served by `$exportfilerequest`.
pub fn file_url(base_url: &str, job_id: &uuid::Uuid, file_name: &str) -> String {
    format!("{base_url}/$exportfilerequest?_id={job_id}&filename={file_name}")
}

pub fn build(
    job: &Job,
    files: &[ExportFile],
    base_url: &str,
    requires_access_token: bool,
) -> Manifest {
    let mut sorted: Vec<&ExportFile> = files.iter().filter(|f| f.resource_count > 0).collect();
    sorted.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let organized = job.params.organize_output_by.is_some();
    let entries = |kind: FileKind| -> Vec<ManifestEntry> {
        let blocks = kind == FileKind::Output && organized;
        sorted
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| ManifestEntry {
                resource_type: (!blocks).then(|| f.resource_type.clone()),
                url: file_url(base_url, &job.id, &f.file_name),
                count: (!blocks).then_some(f.resource_count),
            })
            .collect()
    };
    Manifest {
        transaction_time: format_instant(&job.transaction_time),
        request: job.request_url.clone(),
        requires_access_token,
        output_organized_by: job.params.organize_output_by,
        output: entries(FileKind::Output),
        error: entries(FileKind::Error),
        deleted: job.params.since.map(|_| entries(FileKind::Deleted)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::job::{ExportLevel, JobStatus};
    use crate::export::params::ExportParams;
    use chrono::TimeZone;

    fn job(since: bool) -> Job {
        let t = chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        Job {
            id: uuid::Uuid::nil(),
            level: ExportLevel::System,
            group_id: None,
            params: ExportParams {
                types: None,
                since: since.then_some(t),
                output_format: Default::default(),
                ..Default::default()
            },
            request_url: "http://h/$export".into(),
            client_id: None,
            transaction_time: t,
            status: JobStatus::Complete,
            planned: true,
            attempts: 0,
            error: None,
            public_error: None,
            created_at: t,
            completed_at: Some(t),
            expires_at: None,
            deleted_at: None,
            scan_patients: None,
        }
    }

    fn file(name: &str, kind: FileKind, t: &str, count: i64) -> ExportFile {
        ExportFile {
            file_name: name.into(),
            kind,
            resource_type: t.into(),
            object_key: format!("k/{name}"),
            gzip_object_key: None,
            resource_count: count,
            byte_count: count * 10,
        }
    }

    #[test]
    fn manifest_lists_files_in_order_with_absolute_urls_and_always_an_error_array() {
        let files = vec![
            file("Patient-0002.ndjson", FileKind::Output, "Patient", 1),
            file(
                "Observation-0001.ndjson",
                FileKind::Output,
                "Observation",
                5,
            ),
            file("Patient-0001.ndjson", FileKind::Output, "Patient", 3),
            file("Empty-0001.ndjson", FileKind::Output, "Device", 0),
        ];
        let m = build(&job(false), &files, "https://x/fhir", true);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["transactionTime"], "2024-01-02T03:04:05.000Z");
        assert_eq!(v["request"], "http://h/$export");
        assert_eq!(v["requiresAccessToken"], true);
        assert_eq!(v["error"], serde_json::json!([]));
        assert!(v.get("deleted").is_none());
        let types: Vec<_> = m
            .output
            .iter()
            .map(|e| {
                (
                    e.resource_type.as_deref().unwrap_or(""),
                    e.count.unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(
            types,
            vec![("Observation", 5), ("Patient", 3), ("Patient", 1)]
        );
        assert!(v.get("outputOrganizedBy").is_none());
        assert_eq!(
            m.output[0].url,
            "https://x/fhir/$exportfilerequest?_id=00000000-0000-0000-0000-000000000000&filename=Observation-0001.ndjson"
        );
    }

    #[test]
    fn manifest_has_deleted_when_since_was_given() {
        let m = build(
            &job(true),
            &[file(
                "OperationOutcome-errors.ndjson",
                FileKind::Error,
                "OperationOutcome",
                2,
            )],
            "b",
            false,
        );
        assert_eq!(m.deleted, Some(vec![]));
        assert_eq!(m.error.len(), 1);
    }

    #[test]
    fn files_organized_by_patient_are_listed_by_url_only() {
        let mut j = job(false);
        j.params.organize_output_by = Some(crate::export::params::OrganizeBy::Patient);
        let files = vec![
            file("blocks-0001.ndjson", FileKind::Output, "", 40),
            file(
                "OperationOutcome-x.ndjson",
                FileKind::Error,
                "OperationOutcome",
                1,
            ),
        ];
        let v = serde_json::to_value(build(&j, &files, "https://x/fhir", false)).unwrap();
        assert_eq!(v["outputOrganizedBy"], "Patient");
        assert_eq!(
            v["output"],
            serde_json::json!([{"url": "https://x/fhir/$exportfilerequest?_id=00000000-0000-0000-0000-000000000000&filename=blocks-0001.ndjson"}])
        );
        assert_eq!(v["error"][0]["type"], "OperationOutcome");
        assert_eq!(v["error"][0]["count"], 1);
    }
}
