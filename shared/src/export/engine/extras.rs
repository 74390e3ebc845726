//! The files beside the data: deleted[] (with `_since`), OperationOutcomes for dangling
//! references to AdditionalResources, and the request's own outcomes (lenient handling).

use uuid::Uuid;

use super::sink::FileSink;
use super::{Exporter, Failure};
use crate::db::reads::{self, Selection};
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::transform::RowTransform;
use crate::fhir::outcome::Severity;
use crate::fhir::OperationOutcome;

impl Exporter {
    /// AdditionalResources that exported resources reference but that do not exist are reported
    /// as OperationOutcomes in error[]; the export still completes.
    pub(super) async fn write_dangling_reference_errors(
        &self,
        sel: &Selection<'_>,
    ) -> Result<Option<ExportFile>, Failure> {
        let Some(scope) = &sel.scope else {
            return Ok(None);
        };
        if scope.referenced_from.is_empty() {
            return Ok(None);
        }
        let dangling =
            reads::select_dangling_refs(&self.pool, sel, scope.referenced_from, 10_000).await?;
        if dangling.is_empty() {
            return Ok(None);
        }
        let lines: Vec<OperationOutcome> = dangling
            .iter()
            .map(|(source_type, source_id, target_id)| {
                OperationOutcome::new(
                    Severity::Warning,
                    "not-found",
                    format!(
                        "{source_type}/{source_id} references {}/{target_id}, which does not exist; it is not in the export",
                        sel.resource_type
                    ),
                )
            })
            .collect();
        let name = format!("OperationOutcome-{}.ndjson", sel.resource_type);
        Ok(Some(self.write_outcomes(sel.job_id, name, &lines).await?))
    }

    /// With `_since`: resources of this type deleted since then, as ndjson of transaction
    /// Bundles with one DELETE entry each (so `count` is both lines and resources), listed in
    /// `deleted[]`. With `_typeFilter`, only those whose last content matches a query of their
    /// type ("resources that match the kick-off request criteria", IG).
    pub(super) async fn write_deleted(
        &self,
        sel: &Selection<'_>,
        transform: &RowTransform,
    ) -> Result<Option<ExportFile>, Failure> {
        if sel.since.is_none() {
            return Ok(None);
        }
        let file_name = format!("Bundle-deleted-{}.ndjson", sel.resource_type);
        // Written page by page (a mass deletion is not held in memory); the object is started
        // at the first listed deletion, so a type with none leaves nothing behind.
        let mut sink: Option<FileSink> = None;
        let mut cursor = String::new();
        loop {
            let rows = match reads::select_deleted(&self.pool, sel, &cursor, self.page_rows).await {
                Ok(rows) => rows,
                Err(e) => return Err(super::sink::abandon(sink, e.into()).await),
            };
            let Some(last) = rows.last() else { break };
            cursor.clone_from(&last.id);
            let mut page = Vec::new();
            let mut lines = 0;
            for row in rows.iter().filter(|r| transform.keeps(&r.resource)) {
                let url = format!("{}/{}", sel.resource_type, row.id);
                let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": url}}]});
                page.extend_from_slice(bundle.to_string().as_bytes());
                page.push(b'\n');
                lines += 1;
            }
            if page.is_empty() {
                continue;
            }
            let mut s = match sink.take() {
                Some(s) => s,
                None => {
                    FileSink::open(
                        self.store.as_ref(),
                        sel.job_id,
                        file_name.clone(),
                        FileKind::Deleted,
                        "Bundle",
                    )
                    .await?
                }
            };
            if let Err(e) = s.write(&page, lines).await {
                return Err(s.abandon(e).await);
            }
            sink = Some(s);
        }
        match sink {
            Some(s) => Ok(Some(s.finish().await?)),
            None => Ok(None),
        }
    }

    /// Writes OperationOutcomes as one error file of the job.
    pub(super) async fn write_outcomes(
        &self,
        job_id: Uuid,
        file_name: String,
        outcomes: &[OperationOutcome],
    ) -> Result<ExportFile, Failure> {
        let mut body = Vec::new();
        for oo in outcomes {
            body.extend_from_slice(oo.to_json().as_bytes());
            body.push(b'\n');
        }
        let mut sink = FileSink::open(
            self.store.as_ref(),
            job_id,
            file_name,
            FileKind::Error,
            "OperationOutcome",
        )
        .await?;
        if let Err(e) = sink.write(&body, outcomes.len() as i64).await {
            return Err(sink.abandon(e).await);
        }
        sink.finish().await
    }
}
