//! The per-patient block writer of `organizeOutputBy=Patient` (IG v3): files of blocks, one per
//! patient in id order — a `Parameters` header naming the patient, its Patient resource, then
//! its compartment resources (and the AdditionalResources they reference and the Provenance
//! that targets them) by type and id.

use std::collections::HashMap;
use std::time::Instant;

use futures::TryStreamExt;

use super::planner::{export_time, provenance_association, JobLayout};
use super::sink::{abandon, FileSink};
use super::{Exporter, Failure, ItemOutcome};
use crate::db::reads;
use crate::db::work_items::{self, Checkpointed, WorkItem};
use crate::db::DbError;
use crate::export::job::Job;
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::transform::RowTransform;
use crate::export::JobStatus;
use crate::fhir::elements::ElementsFilter;
use crate::fhir::resource_types::is_patient_compartment_type;
use crate::fhir::search::TypeFilters;

/// Patients per block query (their rows are streamed, not held).
const BLOCK_BATCH_PATIENTS: i64 = 200;
/// Bytes of blocks gathered before a write to the object store.
const BLOCK_BUFFER: usize = 256 * 1024;

/// How a batch of blocks ended.
enum BatchEnd {
    /// Every block of the batch is written; the file (if any) stays open.
    Done(Option<FileSink>),
    /// Near the deadline: the file was closed and checkpointed at a block boundary.
    Deadline,
    LeaseLost,
}

/// What the blocks of a job hold besides each patient's compartment resources.
struct BlockPlan {
    /// Compartment types read per patient (Provenance too when it is in scope).
    compartment_types: Vec<String>,
    /// Exported types outside the compartment (AdditionalResources).
    referenced_types: Vec<String>,
    /// The types whose Provenance is associated data, when it is asked for.
    provenance_target_types: Vec<String>,
    latest_provenance: bool,
}

impl BlockPlan {
    fn new(job: &Job, layout: &JobLayout) -> BlockPlan {
        let types = &layout.types;
        // Compartment members other than Provenance; they are also the Provenance targets.
        let compartment: Vec<String> = layout
            .exported_compartment_types
            .iter()
            .filter(|t| *t != "Provenance")
            .cloned()
            .collect();
        let with_provenance = types.iter().any(|t| t == "Provenance");
        let associated = with_provenance
            .then(|| provenance_association(job, &layout.target_types))
            .flatten();
        let mut compartment_types = compartment.clone();
        if with_provenance && associated.as_ref().is_none_or(|a| a.with_scope) {
            compartment_types.push("Provenance".into());
        }
        BlockPlan {
            compartment_types,
            referenced_types: types
                .iter()
                .filter(|t| !is_patient_compartment_type(t))
                .cloned()
                .collect(),
            provenance_target_types: if associated.is_some() {
                compartment
            } else {
                Vec::new()
            },
            latest_provenance: associated.as_ref().is_some_and(|a| a.latest),
        }
    }

    fn query<'a>(
        &'a self,
        job: &Job,
        layout: &'a JobLayout,
        patients: &'a [String],
    ) -> reads::BlockQuery<'a> {
        reads::BlockQuery {
            patients,
            compartment_types: &self.compartment_types,
            referencing_types: &layout.referencing_types,
            referenced_types: &self.referenced_types,
            provenance_target_types: &self.provenance_target_types,
            latest_provenance: self.latest_provenance,
            transaction_time: export_time(job),
            since: job.params.since,
        }
    }
}

/// The blocks not yet written to the file, as lines.
struct Pending {
    buf: Vec<u8>,
    lines: i64,
}

impl Pending {
    fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
    }
}

/// Writes `pending` to `file` (opened by then whenever `pending` holds a line).
async fn flush(file: &mut Option<FileSink>, pending: &mut Pending) -> Result<(), Failure> {
    if let Some(mut f) = file.take() {
        if let Err(e) = f.write(&pending.buf, pending.lines).await {
            return Err(f.abandon(e).await);
        }
        *file = Some(f);
    }
    pending.buf.clear();
    pending.lines = 0;
    Ok(())
}

impl Exporter {
    /// Patients are read in batches whose rows are streamed, files close at a block boundary
    /// once past `MAX_FILE_BYTES` (a block is never split), and the item's cursor is the last
    /// patient written, so a resumed attempt continues after it.
    pub(super) async fn export_blocks(
        &self,
        job: &Job,
        mut item: WorkItem,
        layout: &JobLayout,
        filters: &TypeFilters,
        elements: &ElementsFilter,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let plan = BlockPlan::new(job, layout);
        let transforms: HashMap<&str, RowTransform> = layout
            .types
            .iter()
            .map(|t| (t.as_str(), RowTransform::new(t, filters, elements)))
            .collect();
        let mut file: Option<FileSink> = None;
        loop {
            let batch = match reads::select_patient_batch(
                &self.pool,
                job.id,
                &item.cursor_id,
                BLOCK_BATCH_PATIENTS,
            )
            .await
            {
                Ok(batch) => batch,
                Err(e) => return Err(abandon(file, e.into()).await),
            };
            let Some(last) = batch.last().cloned() else {
                break;
            };
            let query = plan.query(job, layout, &batch);
            file = match self
                .write_blocks(job, &mut item, file, &query, &transforms, deadline)
                .await?
            {
                BatchEnd::Done(open) => open,
                BatchEnd::Deadline => return Ok(ItemOutcome::Deadline),
                BatchEnd::LeaseLost => return Ok(ItemOutcome::LeaseLost),
            };
            // Patients of the batch without a block are behind us too.
            item.cursor_id = last;
            if let Some(stop) = self.after_batch(&mut item, &mut file, deadline).await? {
                return Ok(stop);
            }
        }
        let mut finished = self.close_block_file(&mut item, file.take()).await?;
        // deleted[] (with `_since`) and dangling references, per type as without blocks.
        for t in &layout.types {
            let sel = layout.selection(job, &self.config, t, None);
            finished.extend(self.write_dangling_reference_errors(&sel).await?);
            finished.extend(self.write_deleted(&sel, &transforms[t.as_str()]).await?);
        }
        item.done = true;
        Ok(match self.checkpoint(&item, &finished, &[]).await? {
            Checkpointed::Completed => ItemOutcome::Finished { completed: true },
            Checkpointed::Saved => ItemOutcome::Finished { completed: false },
            Checkpointed::LeaseLost => ItemOutcome::LeaseLost,
        })
    }

    /// After a batch: the lease is renewed (a cancelled job or a lost lease stops the item,
    /// discarding the open file), and near the deadline the file is finished and checkpointed.
    async fn after_batch(
        &self,
        item: &mut WorkItem,
        file: &mut Option<FileSink>,
        deadline: Instant,
    ) -> Result<Option<ItemOutcome>, Failure> {
        let stop =
            match work_items::renew_lease(&self.pool, item, &self.owner, self.config.lease).await {
                Ok(Some(JobStatus::Active)) => None,
                Ok(Some(JobStatus::CancellationRequested)) => Some(ItemOutcome::Cancelled),
                Ok(_) => Some(ItemOutcome::LeaseLost),
                Err(e) => return Err(abandon(file.take(), e.into()).await),
            };
        if let Some(stop) = stop {
            if let Some(f) = file.take() {
                f.abort().await;
            }
            return Ok(Some(stop));
        }
        if !self.deadline_reached(deadline) {
            return Ok(None);
        }
        let finished = self.close_block_file(item, file.take()).await?;
        Ok(Some(match self.checkpoint(item, &finished, &[]).await? {
            Checkpointed::LeaseLost => ItemOutcome::LeaseLost,
            _ => ItemOutcome::Deadline,
        }))
    }

    /// Streams the blocks of one batch of patients into `file` (opened at the first block).
    /// Rows come ordered by patient; a header line opens each patient's block before its first
    /// resource that `_typeFilter` keeps (a patient with none has no block).
    async fn write_blocks(
        &self,
        job: &Job,
        item: &mut WorkItem,
        mut file: Option<FileSink>,
        query: &reads::BlockQuery<'_>,
        transforms: &HashMap<&str, RowTransform>,
        deadline: Instant,
    ) -> Result<BatchEnd, Failure> {
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => return Err(abandon(file, DbError::from(e).into()).await),
        };
        let rows = match reads::stream_blocks(&client, query).await {
            Ok(rows) => rows,
            Err(e) => return Err(abandon(file, e.into()).await),
        };
        futures::pin_mut!(rows);
        let mut open: Option<String> = None;
        let mut pending = Pending {
            buf: Vec::with_capacity(BLOCK_BUFFER),
            lines: 0,
        };
        loop {
            let row = match rows.try_next().await {
                Ok(Some(row)) => reads::block_row(&row),
                Ok(None) => break,
                Err(e) => return Err(abandon(file, DbError::from(e).into()).await),
            };
            let Some(line) = transforms
                .get(row.resource_type.as_str())
                .and_then(|t| t.apply(&row.resource))
            else {
                continue;
            };
            if open.as_deref() != Some(row.patient_id.as_str()) {
                let started = self
                    .start_block(job, item, &mut file, &mut pending, &mut open, deadline)
                    .await?;
                if let Some(end) = started {
                    return Ok(end);
                }
                let header = serde_json::json!({"resourceType": "Parameters", "parameter": [
                    {"name": "header", "valueReference": {"reference": format!("Patient/{}", row.patient_id)}}]});
                pending.push(header.to_string().as_bytes());
                open = Some(row.patient_id);
            }
            pending.push(line.as_bytes());
            pending.lines += 1;
            if pending.buf.len() >= BLOCK_BUFFER {
                flush(&mut file, &mut pending).await?;
            }
        }
        flush(&mut file, &mut pending).await?;
        Ok(BatchEnd::Done(file))
    }

    /// Before a patient's block: when the file is past `MAX_FILE_BYTES`, or near the deadline,
    /// the file is finished and checkpointed with the previous patient (`open`) as the cursor,
    /// and the block starts a new file (near the deadline the batch stops there instead: its
    /// end is returned). Opens the file the block goes to.
    async fn start_block(
        &self,
        job: &Job,
        item: &mut WorkItem,
        file: &mut Option<FileSink>,
        pending: &mut Pending,
        open: &mut Option<String>,
        deadline: Instant,
    ) -> Result<Option<BatchEnd>, Failure> {
        let full = file
            .as_ref()
            .is_some_and(|f| f.bytes + pending.buf.len() as u64 >= self.config.max_file_bytes);
        let late = file.is_some() && self.deadline_reached(deadline);
        if full || late {
            flush(file, pending).await?;
            // Everything up to the previous block is in this file.
            if let Some(prev) = open.take() {
                item.cursor_id = prev;
            }
            let finished = self.close_block_file(item, file.take()).await?;
            if self.checkpoint(item, &finished, &[]).await? == Checkpointed::LeaseLost {
                return Ok(Some(BatchEnd::LeaseLost));
            }
            if late {
                return Ok(Some(BatchEnd::Deadline));
            }
        }
        if file.is_none() {
            let name = format!("blocks-{:04}.ndjson", item.next_file_seq);
            *file = Some(
                FileSink::open(self.store.as_ref(), job.id, name, FileKind::Output, "").await?,
            );
        }
        Ok(None)
    }

    /// Finishes a block file (nothing to do without one); returns its row for the checkpoint.
    async fn close_block_file(
        &self,
        item: &mut WorkItem,
        file: Option<FileSink>,
    ) -> Result<Vec<ExportFile>, Failure> {
        let Some(f) = file else {
            return Ok(Vec::new());
        };
        let file = f.finish().await?;
        item.next_file_seq += 1;
        Ok(vec![file])
    }
}
