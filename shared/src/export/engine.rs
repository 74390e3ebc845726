//! The exporter engine: claims jobs with a lease, plans work items, streams pages of resources
//! into ndjson files, checkpoints at file boundaries, and completes, cancels or fails jobs.
//!
//! Every step is idempotent: a crashed invocation leaves the cursor at the last finished file, and
//! the next owner rewrites the unfinished file under the same name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use super::job::{ExportLevel, Job, JobStatus};
use super::manifest::{ExportFile, FileKind};
use super::params::{LATEST_PROVENANCE, RELEVANT_PROVENANCE};
use super::transform::RowTransform;
use crate::config::Config;
use crate::db::files::{self, Associated, PatientScope, Selection};
use crate::db::jobs::PatientSet;
use crate::db::work_items::{self, WorkItem};
use crate::db::{jobs, resources, DbError, Pool};
use crate::fhir::elements::ElementsFilter;
use crate::fhir::outcome::Severity;
use crate::fhir::resource_types::{is_patient_compartment_type, patient_compartment_types};
use crate::fhir::search::TypeFilters;
use crate::fhir::OperationOutcome;
use crate::queue::JobQueue;
use crate::storage::{ObjectStore, ObjectWriter, StorageError};

/// Rows per page read from Postgres.
pub const PAGE_ROWS: i64 = 1000;
/// Bytes per page read from Postgres (the first row of a page always comes, however large).
pub const PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// The work item of an `organizeOutputBy=Patient` job (not a resource type: starts with `_`).
pub const BLOCKS_ITEM: &str = "_blocks";
/// Patients per block query (their rows are streamed, not held).
const BLOCK_BATCH_PATIENTS: i64 = 200;
/// Bytes of blocks gathered before a write to the object store.
const BLOCK_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl EngineError {
    /// What a client may be told: the kind of failure, never its details (paths, object keys
    /// and database text stay in the logs and `bulk-export jobs`).
    pub fn public_message(&self) -> &'static str {
        match self {
            EngineError::Db(_) => {
                "a database error interrupted the export; the server operator has the details"
            }
            EngineError::Storage(_) => {
                "writing the export files failed; the server operator has the details"
            }
        }
    }
}

/// Renews the job's lease every third of its length until the job is no longer this owner's.
async fn heartbeat(pool: crate::db::Pool, id: Uuid, owner: String, lease: Duration) {
    let mut every = tokio::time::interval(lease / 3);
    every.tick().await;
    loop {
        every.tick().await;
        match jobs::renew_lease(&pool, id, &owner, lease).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => warn!(job_id = %id, error = %e, "lease heartbeat failed; retrying"),
        }
    }
}

/// Aborts the task when dropped (the heartbeat ends with the job, whatever path it takes).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub completed: Vec<Uuid>,
    pub failed: Vec<Uuid>,
    pub cancelled: Vec<Uuid>,
    pub handed_off: Vec<Uuid>,
    pub retrying: Vec<Uuid>,
    pub purged: usize,
}

enum Progress {
    Finished,
    Deadline,
    Cancelled,
    LeaseLost,
}

pub struct Exporter {
    pool: Pool,
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
    config: Arc<Config>,
    owner: String,
    /// Wait before a failed attempt is retried.
    pub retry_backoff: Duration,
    /// Rows per page read from Postgres.
    pub page_rows: i64,
}

impl Exporter {
    pub fn new(
        pool: Pool,
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        config: Arc<Config>,
    ) -> Self {
        Exporter {
            pool,
            store,
            queue,
            config,
            owner: format!("exporter-{}", Uuid::new_v4()),
            retry_backoff: Duration::from_secs(5),
            page_rows: PAGE_ROWS,
        }
    }

    /// Works on claimable jobs until none is left or the deadline comes near, then purges the
    /// files of expired and deleted jobs.
    pub async fn run_until_idle(
        &self,
        prefer: Option<Uuid>,
        deadline: Instant,
    ) -> Result<RunSummary, EngineError> {
        let mut summary = RunSummary::default();
        let mut prefer = prefer;
        while !self.near(deadline) {
            let Some(job) =
                jobs::claim_job(&self.pool, &self.owner, self.config.lease, prefer.take()).await?
            else {
                break;
            };
            let id = job.id;
            let span = info_span!("export_job", job_id = %id, level = job.level.as_str());
            // The lease is kept alive by time, not by page progress: a storage call that takes
            // long (within its own timeout) does not let another exporter take the job.
            let heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
                self.pool.clone(),
                id,
                self.owner.clone(),
                self.config.lease,
            )));
            let result = self
                .process(job, deadline, &mut summary)
                .instrument(span)
                .await;
            drop(heartbeat);
            result?;
            if summary.handed_off.contains(&id) || summary.retrying.contains(&id) {
                break;
            }
        }
        summary.purged = self.purge_finished().await?;
        Ok(summary)
    }

    /// This exporter's lease owner name: jobs it held when its process stopped are claimed again
    /// at once by a process of the same name (`serve` names it after host and port), instead of
    /// after the lease expires.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    fn near(&self, deadline: Instant) -> bool {
        Instant::now() >= deadline
    }

    async fn process(
        &self,
        job: Job,
        deadline: Instant,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        if job.status == JobStatus::CancellationRequested {
            self.cancel(&job).await?;
            summary.cancelled.push(job.id);
            return Ok(());
        }
        if job.attempts >= self.config.max_attempts {
            let error = jobs::JobError {
                internal: format!(
                    "export gave up after {} attempts; last error: {}",
                    job.attempts,
                    job.error
                        .as_deref()
                        .unwrap_or("the exporter stopped unexpectedly")
                ),
                public: format!(
                    "the export failed after {} attempts: {}",
                    job.attempts,
                    job.public_error
                        .as_deref()
                        .unwrap_or("the exporter stopped unexpectedly")
                ),
            };
            warn!(attempts = job.attempts, error = %error.internal, "export failed for good");
            jobs::fail_job(
                &self.pool,
                job.id,
                &self.owner,
                &error,
                self.config.job_retention,
            )
            .await?;
            summary.failed.push(job.id);
            return Ok(());
        }
        match self.export(&job, deadline).await {
            Ok(Progress::Finished) => {
                if jobs::complete_job(&self.pool, job.id, &self.owner, self.config.job_retention)
                    .await?
                {
                    info!("export complete");
                    summary.completed.push(job.id);
                }
            }
            Ok(Progress::Deadline) => {
                jobs::release_job(&self.pool, job.id, &self.owner).await?;
                if let Err(e) = self.queue.send(job.id).await {
                    warn!(error = %e, "could not requeue; the schedule will resume the job");
                }
                info!("deadline near: progress saved, job handed off");
                summary.handed_off.push(job.id);
            }
            Ok(Progress::Cancelled) => {
                self.cancel(&job).await?;
                summary.cancelled.push(job.id);
            }
            Ok(Progress::LeaseLost) => warn!("lease lost to another exporter; stopping"),
            Err(Permanent(msg)) => {
                warn!(error = %msg, "export failed");
                // A permanent failure is about the request (a Group that is gone): say it.
                let error = jobs::JobError {
                    internal: msg.clone(),
                    public: msg,
                };
                jobs::fail_job(
                    &self.pool,
                    job.id,
                    &self.owner,
                    &error,
                    self.config.job_retention,
                )
                .await?;
                summary.failed.push(job.id);
            }
            Err(Transient(e)) => {
                let internal = crate::error_chain(&e);
                warn!(error = %internal, "export attempt failed");
                let error = jobs::JobError {
                    internal,
                    public: e.public_message().to_string(),
                };
                let status = jobs::record_failure(
                    &self.pool,
                    job.id,
                    &self.owner,
                    &error,
                    self.config.max_attempts,
                    self.retry_backoff,
                    self.config.job_retention,
                )
                .await?;
                if status == Some(JobStatus::Failed) {
                    summary.failed.push(job.id);
                } else {
                    summary.retrying.push(job.id);
                }
            }
        }
        Ok(())
    }

    async fn cancel(&self, job: &Job) -> Result<(), EngineError> {
        let n = self.store.delete_prefix(&job.id.to_string()).await?;
        jobs::mark_cancelled(&self.pool, job.id, &self.owner).await?;
        info!(files_deleted = n, "export cancelled");
        Ok(())
    }

    /// Deletes the files of jobs the client deleted or that passed their expiry.
    pub async fn purge_finished(&self) -> Result<usize, EngineError> {
        let ids = jobs::select_jobs_to_purge(&self.pool, 100).await?;
        for id in &ids {
            let n = self.store.delete_prefix(&id.to_string()).await?;
            jobs::mark_purged(&self.pool, *id).await?;
            info!(job_id = %id, files_deleted = n, "export files purged");
        }
        Ok(ids.len())
    }

    async fn export(&self, job: &Job, deadline: Instant) -> Result<Progress, Failure> {
        if !job.planned {
            self.plan(job).await?;
        }
        let items = work_items::select_work_items(&self.pool, job.id).await?;
        // Validated at kick-off; a job stored by another version could still fail here.
        let filters = TypeFilters::parse(&job.params.type_filters).map_err(Permanent)?;
        let elements = ElementsFilter::new(&job.params.elements);
        let types: Vec<String> = items
            .iter()
            .map(|i| i.resource_type.clone())
            .filter(|t| t != BLOCKS_ITEM)
            .collect();
        let exported_compartment_types: Vec<String> = types
            .iter()
            .filter(|t| is_patient_compartment_type(t))
            .cloned()
            .collect();
        let target_types: Vec<String> = types
            .iter()
            .filter(|t| *t != "Provenance")
            .cloned()
            .collect();
        // AdditionalResources are those referenced by the patients' compartment, whichever
        // types `_type` asked for: `_type` filters the output, not the traversal (so
        // `Patient/$export?_type=Organization` gives the Organizations the unfiltered export
        // gives). The compartment types are those an unfiltered export of this job would have.
        let referencing_types: Vec<String> = if job.level == ExportLevel::System {
            Vec::new()
        } else {
            let present = resources::select_resource_types(&self.pool).await?;
            self.unfiltered_types(job, &present)
                .into_iter()
                .filter(|t| is_patient_compartment_type(t))
                .collect()
        };
        if job.params.organize_output_by.is_some() {
            let layout = BlockTypes {
                types: &types,
                exported_compartment_types: &exported_compartment_types,
                referencing_types: &referencing_types,
                target_types: &target_types,
            };
            return self
                .export_blocks(job, items, layout, &filters, &elements, deadline)
                .await;
        }
        for item in items.into_iter().filter(|i| !i.done) {
            let resource_type = item.resource_type.clone();
            let sel = self.selection(job, &resource_type, &referencing_types, &target_types);
            let transform = RowTransform::new(&resource_type, &filters, &elements);
            let span = info_span!("work_item", resource_type = %resource_type);
            match self
                .export_item(item, &sel, &transform, deadline)
                .instrument(span)
                .await?
            {
                Progress::Finished => {}
                other => return Ok(other),
            }
        }
        Ok(Progress::Finished)
    }

    /// Which resources of `resource_type` the job exports (one type per file).
    fn selection<'a>(
        &self,
        job: &Job,
        resource_type: &'a str,
        referencing_types: &'a [String],
        target_types: &'a [String],
    ) -> Selection<'a> {
        let additional = job.level != ExportLevel::System
            && self
                .config
                .additional_resources
                .iter()
                .any(|t| t == resource_type);
        let referenced_from: &[String] = if additional { referencing_types } else { &[] };
        Selection {
            job_id: job.id,
            resource_type,
            transaction_time: export_time(job),
            since: job.params.since,
            scope: (job.level != ExportLevel::System).then_some(PatientScope {
                compartment: is_patient_compartment_type(resource_type),
                referenced_from,
            }),
            associated: (resource_type == "Provenance")
                .then(|| provenance_association(job, target_types))
                .flatten(),
        }
    }

    /// `organizeOutputBy=Patient` (IG v3): files of blocks, one per patient in id order — a
    /// `Parameters` header naming the patient, its Patient resource, then its compartment
    /// resources (and the AdditionalResources they reference and the Provenance that targets
    /// them) by type and id. Patients are read in batches whose rows are streamed, files close
    /// at a block boundary once past `MAX_FILE_BYTES` (a block is never split), and the work
    /// item's cursor is the last patient written, so a resumed attempt continues after it.
    async fn export_blocks(
        &self,
        job: &Job,
        items: Vec<WorkItem>,
        layout: BlockTypes<'_>,
        filters: &TypeFilters,
        elements: &ElementsFilter,
        deadline: Instant,
    ) -> Result<Progress, Failure> {
        let BlockTypes {
            types,
            exported_compartment_types,
            referencing_types,
            target_types,
        } = layout;
        let Some(mut item) = items.into_iter().find(|i| i.resource_type == BLOCKS_ITEM) else {
            return Err(Permanent(
                "organizeOutputBy job planned without its work item".into(),
            ));
        };
        if item.done {
            return Ok(Progress::Finished);
        }
        // Compartment members other than Provenance; they are also the Provenance targets.
        let compartment: Vec<String> = exported_compartment_types
            .iter()
            .filter(|t| *t != "Provenance")
            .cloned()
            .collect();
        let with_provenance = types.iter().any(|t| t == "Provenance");
        let associated = with_provenance
            .then(|| provenance_association(job, target_types))
            .flatten();
        let mut compartment_types = compartment.clone();
        if with_provenance && associated.as_ref().is_none_or(|a| a.with_scope) {
            compartment_types.push("Provenance".into());
        }
        let referenced_types: Vec<String> = types
            .iter()
            .filter(|t| !is_patient_compartment_type(t))
            .cloned()
            .collect();
        let provenance_target_types: Vec<String> = if associated.is_some() {
            compartment
        } else {
            Vec::new()
        };
        let transforms: HashMap<&str, RowTransform> = types
            .iter()
            .map(|t| (t.as_str(), RowTransform::new(t, filters, elements)))
            .collect();
        let mut file: Option<BlockFile> = None;
        loop {
            let batch = match files::select_patient_batch(
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
            let query = files::BlockQuery {
                patients: &batch,
                compartment_types: &compartment_types,
                referencing_types,
                referenced_types: &referenced_types,
                provenance_target_types: &provenance_target_types,
                latest_provenance: associated.as_ref().is_some_and(|a| a.latest),
                transaction_time: export_time(job),
                since: job.params.since,
            };
            let (open, stopped) = self
                .write_blocks(job, &mut item, file, &query, &transforms, deadline)
                .await?;
            if stopped {
                return Ok(Progress::Deadline);
            }
            file = open;
            // Patients of the batch without a block are behind us too.
            item.cursor_id = last;
            let stop =
                match jobs::renew_lease(&self.pool, job.id, &self.owner, self.config.lease).await {
                    Ok(Some(JobStatus::Active)) => None,
                    Ok(Some(JobStatus::CancellationRequested)) => Some(Progress::Cancelled),
                    Ok(_) => Some(Progress::LeaseLost),
                    Err(e) => return Err(abandon(file, e.into()).await),
                };
            if let Some(stop) = stop {
                if let Some(f) = file {
                    f.writer.abort().await.ok();
                }
                return Ok(stop);
            }
            if self.near(deadline) {
                let finished = self.close_block_file(&mut item, file.take()).await?;
                work_items::checkpoint(&self.pool, &item, &finished).await?;
                return Ok(Progress::Deadline);
            }
        }
        let mut finished = self.close_block_file(&mut item, file.take()).await?;
        // deleted[] (with `_since`) and dangling references, per type as without blocks.
        for t in types {
            let sel = self.selection(job, t, referencing_types, target_types);
            finished.extend(self.write_dangling_reference_errors(&sel).await?);
            finished.extend(self.write_deleted(&sel, &transforms[t.as_str()]).await?);
        }
        item.done = true;
        work_items::checkpoint_last(&self.pool, &item, &finished).await?;
        Ok(Progress::Finished)
    }

    /// Streams the blocks of one batch of patients into `file` (opened at the first block).
    /// Rows come ordered by patient; a header line opens each patient's block before its first
    /// resource that `_typeFilter` keeps (a patient with none has no block). When a block is
    /// about to start and the file is past `MAX_FILE_BYTES`, the file is finished and
    /// checkpointed with the previous patient as the cursor, and the block starts a new file.
    /// Near the deadline the same happens and the batch stops there: returns (None, true).
    async fn write_blocks(
        &self,
        job: &Job,
        item: &mut WorkItem,
        mut file: Option<BlockFile>,
        query: &files::BlockQuery<'_>,
        transforms: &HashMap<&str, RowTransform>,
        deadline: Instant,
    ) -> Result<(Option<BlockFile>, bool), Failure> {
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => return Err(abandon(file, DbError::from(e).into()).await),
        };
        let rows = match files::stream_blocks(&client, query).await {
            Ok(rows) => rows,
            Err(e) => return Err(abandon(file, e.into()).await),
        };
        futures::pin_mut!(rows);
        let mut open: Option<String> = None;
        let mut buf = Vec::with_capacity(BLOCK_BUFFER);
        loop {
            let row = match rows.try_next().await {
                Ok(Some(row)) => files::block_row(&row),
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
                let full = file
                    .as_ref()
                    .is_some_and(|f| f.bytes + buf.len() as u64 >= self.config.max_file_bytes);
                let late = file.is_some() && self.near(deadline);
                if full || late {
                    if let Some(f) = file.as_mut() {
                        if let Err(e) = f.write(&mut buf).await {
                            return Err(abandon(file, e).await);
                        }
                    }
                    // Everything up to the previous block is in this file.
                    if let Some(prev) = open.take() {
                        item.cursor_id = prev;
                    }
                    let finished = self.close_block_file(item, file.take()).await?;
                    work_items::checkpoint(&self.pool, item, &finished).await?;
                    if late {
                        return Ok((None, true));
                    }
                }
                if file.is_none() {
                    let name = format!("blocks-{:04}.ndjson", item.next_file_seq);
                    let key = format!("{}/{name}", job.id);
                    let writer = self.store.writer(&key).await?;
                    file = Some(BlockFile {
                        writer,
                        name,
                        key,
                        count: 0,
                        bytes: 0,
                    });
                }
                let header = serde_json::json!({"resourceType": "Parameters", "parameter": [
                    {"name": "header", "valueReference": {"reference": format!("Patient/{}", row.patient_id)}}]});
                buf.extend_from_slice(header.to_string().as_bytes());
                buf.push(b'\n');
                open = Some(row.patient_id);
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            if let Some(f) = file.as_mut() {
                f.count += 1;
                if buf.len() >= BLOCK_BUFFER {
                    if let Err(e) = f.write(&mut buf).await {
                        return Err(abandon(file, e).await);
                    }
                }
            }
        }
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write(&mut buf).await {
                return Err(abandon(file, e).await);
            }
        }
        Ok((file, false))
    }

    /// Finishes a block file (nothing to do without one); returns its row for the checkpoint.
    async fn close_block_file(
        &self,
        item: &mut WorkItem,
        file: Option<BlockFile>,
    ) -> Result<Vec<ExportFile>, Failure> {
        let Some(f) = file else {
            return Ok(Vec::new());
        };
        let written = f.writer.finish().await?;
        item.next_file_seq += 1;
        info!(file = %f.name, resources = f.count, bytes = written.bytes, "file written");
        Ok(vec![ExportFile {
            file_name: f.name,
            kind: FileKind::Output,
            resource_type: String::new(),
            object_key: f.key,
            gzip_object_key: written.gzip_key,
            resource_count: f.count,
            byte_count: written.bytes as i64,
        }])
    }

    /// The types of the job's export: `_type`, or without it every type the level can export;
    /// plus Provenance with includeAssociatedData; only types the token covers and that exist.
    fn export_types(
        &self,
        job: &Job,
        requested: Option<&[String]>,
        present: &[String],
    ) -> Vec<String> {
        let mut candidates: Vec<String> = match (requested, job.level) {
            (Some(types), _) => types.to_vec(),
            (None, ExportLevel::System) => present.to_vec(),
            (None, _) => patient_compartment_types()
                .map(str::to_string)
                .chain(self.config.additional_resources.iter().cloned())
                .collect(),
        };
        // includeAssociatedData brings the Provenance of the exported resources, whatever _type.
        if !job.params.include_associated_data.is_empty() {
            candidates.push("Provenance".into());
        }
        // Never a type the client's token does not cover.
        if let Some(allowed) = &job.params.allowed_types {
            candidates.retain(|t| allowed.contains(t));
        }
        let mut types: Vec<String> = candidates
            .into_iter()
            .filter(|t| present.contains(t))
            .collect();
        types.sort();
        types.dedup();
        types
    }

    /// The types an export of this job without `_type` would have.
    fn unfiltered_types(&self, job: &Job, present: &[String]) -> Vec<String> {
        self.export_types(job, None, present)
    }

    async fn plan(&self, job: &Job) -> Result<(), Failure> {
        let present = resources::select_resource_types(&self.pool).await?;
        let types = self.export_types(job, job.params.types.as_deref(), &present);
        let group = match (job.level, &job.group_id) {
            (ExportLevel::Group, Some(g)) => {
                if !resources::resource_exists(&self.pool, "Group", g).await? {
                    return Err(Permanent(format!("Group/{g} no longer exists")));
                }
                Some(g.as_str())
            }
            (ExportLevel::Group, None) => {
                return Err(Permanent("group export without a group id".into()))
            }
            _ => None,
        };
        let patients = match (job.level, &job.params.patients, group) {
            (ExportLevel::System, _, _) => PatientSet::None,
            (_, Some(ids), group) => PatientSet::Listed { ids, group },
            (_, None, Some(g)) => PatientSet::Group(g),
            (_, None, None) => PatientSet::All,
        };
        // Lenient handling: what the kick-off ignored is reported in error[].
        if !job.params.ignored.is_empty() {
            let lines: Vec<OperationOutcome> = job
                .params
                .ignored
                .iter()
                .map(|m| OperationOutcome::new(Severity::Warning, "not-supported", m.clone()))
                .collect();
            let file = self
                .write_outcomes(job.id, "OperationOutcome-request.ndjson", &lines)
                .await?;
            let client = self.pool.get().await.map_err(DbError::from)?;
            work_items::insert_files(&client, job.id, &[file]).await?;
        }
        // Organized by Patient: one work item for the blocks; the per-type items record the
        // types (and carry deleted[] and error files at the end).
        let mut items = types.clone();
        if job.params.organize_output_by.is_some() {
            items.push(BLOCKS_ITEM.into());
        }
        jobs::mark_planned(&self.pool, job.id, &items, patients).await?;
        info!(types = types.len(), "export planned");
        Ok(())
    }

    /// Exports one work item, one file at a time, checkpointing after each file.
    async fn export_item(
        &self,
        mut item: WorkItem,
        sel: &Selection<'_>,
        transform: &RowTransform,
        deadline: Instant,
    ) -> Result<Progress, Failure> {
        loop {
            let file_name = format!("{}-{:04}.ndjson", item.resource_type, item.next_file_seq);
            let key = format!("{}/{}", item.job_id, file_name);
            let mut writer = self.store.writer(&key).await?;
            let (mut count, mut bytes) = (0i64, 0u64);
            let mut exhausted = false;
            let mut stop = None;
            // Phase-0 pages of this file and their snapshots, recorded with its checkpoint.
            let mut ranges: Vec<files::ReadRange> = Vec::new();
            // The next page, read while the current one was being written.
            let mut prefetched: Option<Result<files::Page, crate::db::DbError>> = None;
            loop {
                // Never read past the file's size cap (a single larger resource still comes).
                let room = self.config.max_file_bytes.saturating_sub(bytes).max(1);
                let page = match prefetched.take() {
                    Some(page) => page,
                    None => {
                        files::select_page(
                            &self.pool,
                            sel,
                            item.phase,
                            &item.cursor_id,
                            self.page_rows,
                            PAGE_BYTES.min(room as i64),
                        )
                        .await
                    }
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        writer.abort().await.ok();
                        return Err(e.into());
                    }
                };
                let rows = page.rows;
                if bytes > 0
                    && rows
                        .first()
                        .is_some_and(|r| r.resource.len() as u64 + 1 > room)
                {
                    // The next resource does not fit: it starts the next file.
                    break;
                }
                if let Some(snapshot) = page.snapshot {
                    ranges.push(files::ReadRange {
                        after_id: item.cursor_id.clone(),
                        upto_id: rows.last().map(|r| r.id.clone()),
                        snapshot,
                    });
                }
                if rows.is_empty() {
                    if item.phase == 0 {
                        // Phase 1 decides what phase 0 exported from the phase-0 snapshots, so
                        // they must be durable first: the file (with them) ends here.
                        item.phase = 1;
                        item.cursor_id.clear();
                        break;
                    }
                    exhausted = true;
                    break;
                }
                let mut page = Vec::with_capacity(rows.iter().map(|r| r.resource.len() + 1).sum());
                for row in &rows {
                    if let Some(line) = transform.apply(&row.resource) {
                        page.extend_from_slice(line.as_bytes());
                        page.push(b'\n');
                        count += 1;
                    }
                }
                if let Some(last) = rows.last() {
                    item.cursor_id.clone_from(&last.id);
                }
                // Postgres reads the next page while this one is written: the two overlap
                // instead of taking turns (unless the file or the time ends with this page).
                let after = bytes + page.len() as u64;
                let write = async {
                    if page.is_empty() {
                        Ok(())
                    } else {
                        writer.write(&page).await
                    }
                };
                let written = if after < self.config.max_file_bytes && !self.near(deadline) {
                    let next_room = self.config.max_file_bytes.saturating_sub(after).max(1);
                    let fetch = files::select_page(
                        &self.pool,
                        sel,
                        item.phase,
                        &item.cursor_id,
                        self.page_rows,
                        PAGE_BYTES.min(next_room as i64),
                    );
                    let (written, next) = tokio::join!(write, fetch);
                    prefetched = Some(next);
                    written
                } else {
                    write.await
                };
                if let Err(e) = written {
                    return Err(abort_with(writer, e.into()).await);
                }
                bytes = after;
                match jobs::renew_lease(&self.pool, item.job_id, &self.owner, self.config.lease)
                    .await
                {
                    Ok(Some(JobStatus::Active)) => {}
                    Ok(Some(JobStatus::CancellationRequested)) => {
                        stop = Some(Progress::Cancelled);
                        break;
                    }
                    Ok(_) => {
                        stop = Some(Progress::LeaseLost);
                        break;
                    }
                    Err(e) => return Err(abort_with(writer, e.into()).await),
                }
                if bytes >= self.config.max_file_bytes || self.near(deadline) {
                    break;
                }
            }
            if let Some(stop) = stop {
                writer.abort().await.ok();
                return Ok(stop);
            }
            let file = if count > 0 {
                let written = writer.finish().await?;
                item.next_file_seq += 1;
                Some(ExportFile {
                    file_name,
                    kind: FileKind::Output,
                    resource_type: item.resource_type.clone(),
                    object_key: key,
                    gzip_object_key: written.gzip_key,
                    resource_count: count,
                    byte_count: written.bytes as i64,
                })
            } else {
                writer.abort().await?;
                None
            };
            let mut finished: Vec<ExportFile> = file.iter().cloned().collect();
            if exhausted {
                finished.extend(self.write_dangling_reference_errors(sel).await?);
                finished.extend(self.write_deleted(sel, transform).await?);
            }
            item.done = exhausted;
            work_items::checkpoint_read(&self.pool, &item, &finished, &ranges).await?;
            if let Some(f) = &file {
                info!(file = %f.file_name, resources = f.resource_count, bytes = f.byte_count, "file written");
            }
            if exhausted {
                return Ok(Progress::Finished);
            }
            if self.near(deadline) {
                return Ok(Progress::Deadline);
            }
        }
    }

    /// AdditionalResources that exported resources reference but that do not exist are reported
    /// as OperationOutcomes in error[]; the export still completes.
    async fn write_dangling_reference_errors(
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
            files::select_dangling_refs(&self.pool, sel, scope.referenced_from, 10_000).await?;
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
        Ok(Some(self.write_outcomes(sel.job_id, &name, &lines).await?))
    }

    /// With `_since`: resources of this item deleted since then, as ndjson of transaction Bundles
    /// with one DELETE entry each (so `count` is both lines and resources), listed in `deleted[]`.
    /// With `_typeFilter`, only those whose last content matches a query of their type ("resources
    /// that match the kick-off request criteria", IG).
    async fn write_deleted(
        &self,
        sel: &Selection<'_>,
        transform: &RowTransform,
    ) -> Result<Option<ExportFile>, Failure> {
        if sel.since.is_none() {
            return Ok(None);
        }
        let file_name = format!("Bundle-deleted-{}.ndjson", sel.resource_type);
        let key = format!("{}/{file_name}", sel.job_id);
        // Written page by page (a mass deletion is not held in memory); the object is started
        // at the first listed deletion, so a type with none leaves nothing behind.
        let mut writer: Option<Box<dyn ObjectWriter>> = None;
        let mut cursor = String::new();
        let mut count = 0i64;
        loop {
            let rows = match files::select_deleted(&self.pool, sel, &cursor, self.page_rows).await {
                Ok(rows) => rows,
                Err(e) => {
                    if let Some(w) = writer {
                        return Err(abort_with(w, e.into()).await);
                    }
                    return Err(e.into());
                }
            };
            let Some(last) = rows.last() else { break };
            cursor.clone_from(&last.id);
            let mut page = Vec::new();
            for row in rows.iter().filter(|r| transform.keeps(&r.resource)) {
                let url = format!("{}/{}", sel.resource_type, row.id);
                let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": url}}]});
                page.extend_from_slice(bundle.to_string().as_bytes());
                page.push(b'\n');
                count += 1;
            }
            if page.is_empty() {
                continue;
            }
            let mut w = match writer.take() {
                Some(w) => w,
                None => self.store.writer(&key).await?,
            };
            if let Err(e) = w.write(&page).await {
                return Err(abort_with(w, e.into()).await);
            }
            writer = Some(w);
        }
        let Some(writer) = writer else {
            return Ok(None);
        };
        let written = writer.finish().await?;
        Ok(Some(ExportFile {
            file_name,
            kind: FileKind::Deleted,
            resource_type: "Bundle".into(),
            object_key: key,
            gzip_object_key: written.gzip_key,
            resource_count: count,
            byte_count: written.bytes as i64,
        }))
    }

    /// Writes OperationOutcomes as one error file of the job.
    async fn write_outcomes(
        &self,
        job_id: Uuid,
        file_name: &str,
        outcomes: &[OperationOutcome],
    ) -> Result<ExportFile, Failure> {
        let mut body = Vec::new();
        for oo in outcomes {
            body.extend_from_slice(oo.to_json().as_bytes());
            body.push(b'\n');
        }
        let key = format!("{job_id}/{file_name}");
        let mut writer = self.store.writer(&key).await?;
        if let Err(e) = writer.write(&body).await {
            return Err(abort_with(writer, e.into()).await);
        }
        let written = writer.finish().await?;
        Ok(ExportFile {
            file_name: file_name.to_string(),
            kind: FileKind::Error,
            resource_type: "OperationOutcome".into(),
            object_key: key,
            gzip_object_key: written.gzip_key,
            resource_count: outcomes.len() as i64,
            byte_count: written.bytes as i64,
        })
    }
}

/// The job's types as the blocks of organizeOutputBy=Patient need them (computed once in
/// `export`, as for the per-type layout).
struct BlockTypes<'a> {
    types: &'a [String],
    exported_compartment_types: &'a [String],
    /// Compartment types whose references bring AdditionalResources (whatever `_type`).
    referencing_types: &'a [String],
    target_types: &'a [String],
}

/// An open file of blocks (organizeOutputBy=Patient).
struct BlockFile {
    writer: Box<dyn ObjectWriter>,
    name: String,
    key: String,
    count: i64,
    bytes: u64,
}

impl BlockFile {
    /// Writes and empties `buf`.
    async fn write(&mut self, buf: &mut Vec<u8>) -> Result<(), Failure> {
        if buf.is_empty() {
            return Ok(());
        }
        self.writer.write(buf).await?;
        self.bytes += buf.len() as u64;
        buf.clear();
        Ok(())
    }
}

/// Aborts the open block file, if any, and passes the failure on.
async fn abandon(file: Option<BlockFile>, failure: Failure) -> Failure {
    match file {
        Some(f) => abort_with(f.writer, failure).await,
        None => failure,
    }
}

/// The instant the export shows the data at: the transaction time, or `_until` (v3) when
/// earlier (phase 1 reads the versions of that time).
fn export_time(job: &Job) -> chrono::DateTime<chrono::Utc> {
    job.params
        .until
        .map_or(job.transaction_time, |u| u.min(job.transaction_time))
}

/// How a job's Provenance work item selects (None: like any other type).
///
/// - `LatestProvenanceResources`: only the latest Provenance (by `recorded`) of each exported
///   resource, at every level.
/// - Patient/Group level otherwise: the compartment's Provenance and every Provenance whose
///   target is an exported resource (IG: Provenance of the returned data comes along).
/// - System level with `RelevantProvenanceResources` and a `_type` without Provenance: the
///   Provenance whose target is an exported resource; with Provenance requested, all of them.
fn provenance_association<'a>(job: &Job, target_types: &'a [String]) -> Option<Associated<'a>> {
    let asked = |v: &str| job.params.include_associated_data.iter().any(|x| x == v);
    let provenance_requested = job
        .params
        .types
        .as_ref()
        .is_none_or(|t| t.iter().any(|x| x == "Provenance"));
    let (latest, with_scope) = if asked(LATEST_PROVENANCE) {
        (true, false)
    } else if job.level != ExportLevel::System {
        (false, provenance_requested)
    } else if asked(RELEVANT_PROVENANCE) && !provenance_requested {
        (false, false)
    } else {
        return None;
    };
    Some(Associated {
        target_types,
        latest,
        with_scope,
    })
}

/// Why an attempt stopped early: `Transient` is retried (up to MAX_ATTEMPTS), `Permanent` fails
/// the job at once.
pub enum Failure {
    Transient(EngineError),
    Permanent(String),
}
use Failure::{Permanent, Transient};

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Transient(e.into())
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Transient(e.into())
    }
}

async fn abort_with(writer: Box<dyn ObjectWriter>, failure: Failure) -> Failure {
    if let Err(e) = writer.abort().await {
        warn!(error = %e, "abort after failure also failed");
    }
    failure
}
