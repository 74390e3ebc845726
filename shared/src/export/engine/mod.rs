//! The exporter engine. Jobs are planned into work items (key ranges of a type sized by bytes,
//! or the patient blocks of organizeOutputBy=Patient); any number of exporters claim items with
//! a lease, write them as ndjson files, checkpoint after every file and retry them on their
//! own. The last item's last checkpoint completes the job.
//!
//! - `mod.rs`: the claim/run loop and item outcomes; `coordinate`: plan, cancel, fail, purge;
//! - `planner`: pure planning (types, selections, splitting into items);
//! - `sink`: one output file (open → write → finish/abort);
//! - `typed`: the per-type range writer; `blocks`: the per-patient block writer; `views`: the
//!   range writer of `$viewdefinition-export` (rows of ViewDefinitions);
//! - `extras`: deleted[], dangling-reference outcomes, the request's outcomes.
//!
//! Every step is idempotent: a crashed invocation leaves the item's cursor at its last finished
//! file, and the next owner rewrites the unfinished file under the same name.

mod blocks;
mod coordinate;
mod extras;
pub mod planner;
mod range;
mod sink;
mod typed;
mod views;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use super::job::{ExportLevel, Job, JobStatus};
use crate::config::Config;
use crate::db::reads::ReadRange;
use crate::db::work_items::{self, Checkpointed, WorkItem, BLOCKS_ITEM};
use crate::db::{jobs, resources, DbError, Pool};
use crate::export::manifest::ExportFile;
use crate::export::transform::RowTransform;
use crate::fhir::elements::ElementsFilter;
use crate::fhir::search::TypeFilters;
use crate::queue::JobQueue;
use crate::storage::{ObjectStore, StorageError};
use planner::JobLayout;

/// Rows per batch fetched from Postgres, at most.
pub const PAGE_ROWS: i64 = 4000;
/// Bytes a batch fetched from Postgres aims at (from the mean size of the rows so far).
pub const PAGE_BYTES: i64 = 4 * 1024 * 1024;

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

/// Why an attempt stopped early: `Transient` is retried (up to MAX_ATTEMPTS), `Permanent` fails
/// the job at once.
pub enum Failure {
    Transient(EngineError),
    Permanent(Unexportable),
}

/// Why a job cannot be exported at all (the client is told this).
#[derive(Debug, thiserror::Error)]
pub enum Unexportable {
    #[error(transparent)]
    TypeFilter(#[from] crate::fhir::search::SearchError),
    #[error("Group/{0} no longer exists")]
    GroupGone(String),
    #[error("group export without a group id")]
    NoGroupId,
    /// A view of a `$viewdefinition-export` that cannot run on the stored data.
    #[error("{0}")]
    View(String),
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

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs this run completed (it finished their last item).
    pub completed: Vec<Uuid>,
    pub failed: Vec<Uuid>,
    pub cancelled: Vec<Uuid>,
    /// Jobs of which this run handed work back near its deadline.
    pub handed_off: Vec<Uuid>,
    /// Jobs of which an attempt failed and will be retried.
    pub retrying: Vec<Uuid>,
    pub purged: usize,
    /// Work items this run finished.
    pub items: usize,
}

impl RunSummary {
    fn stopped(&self, id: Uuid) -> bool {
        self.handed_off.contains(&id) || self.retrying.contains(&id)
    }

    /// This run completed `job` (counted in the service metrics, with its duration).
    fn complete(&mut self, job: &Job) {
        crate::metrics::export_completed(since_kickoff(job));
        self.completed.push(job.id);
    }

    /// This run failed `job` for good (counted in the service metrics).
    fn fail(&mut self, job: &Job) {
        crate::metrics::export_failed();
        self.failed.push(job.id);
    }

    /// An attempt at `job` failed; `status` is the job's after the failure was recorded.
    fn attempt_failed(&mut self, job: &Job, status: Option<JobStatus>) {
        if status == Some(JobStatus::Failed) {
            self.fail(job);
        } else {
            self.retrying.push(job.id);
        }
    }
}

/// Time since the job was kicked off.
fn since_kickoff(job: &Job) -> std::time::Duration {
    (chrono::Utc::now() - job.created_at)
        .to_std()
        .unwrap_or_default()
}

/// How an item's work ended.
#[derive(Debug, PartialEq, Eq)]
enum ItemOutcome {
    /// The item is done; `completed`: it was the job's last, and the job is Complete.
    Finished {
        completed: bool,
    },
    Deadline,
    Cancelled,
    /// The item is no longer this exporter's, or its job stopped (failed elsewhere).
    LeaseLost,
}

/// What a heartbeat keeps leased.
enum Leased {
    /// A job being coordinated (planned).
    Job(Uuid),
    /// A work item being exported.
    Item(WorkItem),
}

/// A storage call that runs longer than this is overdue (see [`heartbeat`]).
struct StorageWatch {
    clock: Arc<watch::CallClock>,
    deadline: Option<Duration>,
}

impl StorageWatch {
    /// How long the storage call in flight has run past its deadline.
    fn overdue(&self) -> Option<Duration> {
        let deadline = self.deadline?;
        self.clock
            .longest()
            .filter(|d| *d > deadline)
            .map(|d| d - deadline)
    }
}

/// Renews a lease every third of its length until it is gone (another owner has it, or the
/// work it covers is finished), or until a storage call of this exporter is overdue: then the
/// lease is left to expire, so that another exporter takes the work while this one waits.
async fn heartbeat(
    pool: Pool,
    owner: String,
    lease: Duration,
    leased: Leased,
    storage: StorageWatch,
) {
    let mut every = tokio::time::interval(lease / 3);
    every.tick().await;
    loop {
        every.tick().await;
        if let Some(late) = storage.overdue() {
            warn!(
                overdue_ms = late.as_millis() as u64,
                "a storage call is overdue; no longer renewing the lease, another exporter will take the work"
            );
            if let Leased::Item(item) = &leased {
                if let Err(e) = work_items::mark_storage_down(&pool, item, &owner).await {
                    warn!(error = %e, "could not record the storage outage");
                }
            }
            break;
        }
        let renewed = match &leased {
            Leased::Job(id) => jobs::renew_lease(&pool, *id, &owner, lease).await,
            Leased::Item(item) => work_items::renew_lease(&pool, item, &owner, lease).await,
        };
        match renewed {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => warn!(error = %e, "lease heartbeat failed; retrying"),
        }
    }
}

pub struct Exporter {
    pool: Pool,
    store: Arc<dyn ObjectStore>,
    /// The calls of `store` in flight (`store` is [`watch::Watched`]).
    calls: Arc<watch::CallClock>,
    queue: Arc<dyn JobQueue>,
    config: Arc<Config>,
    owner: String,
    /// The storage this exporter writes to ([`crate::config::StoragePath::identity`] of the
    /// configuration's STORAGE_PATH): it takes only the work of jobs kicked off for it.
    storage: String,
    /// Wait before a failed attempt is retried.
    pub retry_backoff: Duration,
    /// Rows per batch fetched from Postgres, at most.
    pub page_rows: i64,
}

impl Exporter {
    pub fn new(
        pool: Pool,
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        config: Arc<Config>,
    ) -> Self {
        let calls = Arc::new(watch::CallClock::default());
        let store: Arc<dyn ObjectStore> = Arc::new(watch::Watched {
            inner: store,
            clock: calls.clone(),
        });
        Exporter {
            pool,
            store,
            calls,
            queue,
            config: config.clone(),
            owner: format!("exporter-{}", Uuid::new_v4()),
            storage: config.storage_path.identity(),
            retry_backoff: Duration::from_secs(5),
            page_rows: PAGE_ROWS,
        }
    }

    /// This exporter's lease owner name: work it held when its process stopped is claimed again
    /// at once by a process of the same name (`serve` names its workers after host, port and
    /// number), instead of after the lease expires.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Works until nothing is claimable or the deadline comes near: jobs to plan or cancel
    /// first, then work items (those of `prefer` first, then the oldest job's). Then purges the
    /// files of expired and deleted jobs.
    pub async fn run_until_idle(
        &self,
        prefer: Option<Uuid>,
        deadline: Instant,
    ) -> Result<RunSummary, EngineError> {
        let mut summary = RunSummary::default();
        while !self.deadline_reached(deadline) {
            if let Some(job) = jobs::claim_job_in(
                &self.pool,
                &self.owner,
                self.config.lease,
                prefer,
                Some(&self.storage),
            )
            .await?
            {
                let id = job.id;
                let span = info_span!("export_job", job_id = %id, level = job.level.as_str());
                self.coordinate(job, &mut summary).instrument(span).await?;
                if summary.stopped(id) {
                    break;
                }
                continue;
            }
            if let Some(item) = work_items::claim_item(
                &self.pool,
                &self.owner,
                self.config.lease,
                prefer,
                Some(&self.storage),
            )
            .await?
            {
                let id = item.job_id;
                let span = info_span!("work_item", job_id = %id, resource_type = %item.resource_type, part = item.part);
                self.work(item, deadline, &mut summary)
                    .instrument(span)
                    .await?;
                if summary.stopped(id) {
                    break;
                }
                continue;
            }
            break;
        }
        summary.purged = self.purge_finished().await?;
        Ok(summary)
    }

    /// Keeps `leased` this exporter's until the returned guard is dropped.
    fn keep_leased(&self, leased: Leased) -> AbortOnDropHandle<()> {
        AbortOnDropHandle::new(tokio::spawn(heartbeat(
            self.pool.clone(),
            self.owner.clone(),
            self.config.lease,
            leased,
            StorageWatch {
                clock: self.calls.clone(),
                deadline: self.store.call_deadline(),
            },
        )))
    }

    fn deadline_reached(&self, deadline: Instant) -> bool {
        Instant::now() >= deadline
    }

    /// A claimed work item: export it and record how that ended.
    async fn work(
        &self,
        item: WorkItem,
        deadline: Instant,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        let Some(job) = jobs::get_job(&self.pool, item.job_id).await? else {
            return Ok(());
        };
        if let Some(error) = self.spent(&item) {
            warn!(error = %error.internal, "export failed for good");
            self.fail(&job, None, &error, summary).await?;
            return Ok(());
        }
        // The lease is kept alive by time, not by page progress: a storage call that takes
        // long (within its own timeout) does not let another exporter take the item.
        let heartbeat = self.keep_leased(Leased::Item(item.clone()));
        let result = self.export_item(&job, item.clone(), deadline).await;
        drop(heartbeat);
        let result = self.unless_taken_over(&item, result).await?;
        self.record_outcome(&job, &item, result, summary).await
    }

    /// Why an item must not be tried again, if it must not: it used up its attempts, or its
    /// storage has been unavailable for STORAGE_OUTAGE_SECONDS.
    fn spent(&self, item: &WorkItem) -> Option<jobs::JobError> {
        let (internal, public) = (item.error.as_deref(), item.public_error.as_deref());
        if item.attempts >= self.config.max_attempts {
            return Some(coordinate::gave_up(item.attempts, internal, public));
        }
        let down_for = item
            .storage_down_since
            .and_then(|since| (chrono::Utc::now() - since).to_std().ok());
        down_for
            .is_some_and(|d| d >= self.config.storage_outage)
            .then(|| jobs::JobError::storage_gone(self.config.storage_outage, internal, public))
    }

    /// A file of the item that another exporter finished, or whose job's files were deleted,
    /// while this one was stopped past its lease (SIGSTOP, a long pause): the expected race,
    /// not a failed attempt, unless this exporter still holds the item.
    async fn unless_taken_over(
        &self,
        item: &WorkItem,
        result: Result<ItemOutcome, Failure>,
    ) -> Result<Result<ItemOutcome, Failure>, EngineError> {
        let Err(Transient(EngineError::Storage(StorageError::PartialGone { key }))) = result else {
            return Ok(result);
        };
        let status =
            work_items::renew_lease(&self.pool, item, &self.owner, self.config.lease).await?;
        if status == Some(JobStatus::Active) {
            return Ok(Err(Transient(EngineError::Storage(
                StorageError::PartialGone { key },
            ))));
        }
        info!(file = %key, "the item's unfinished file is gone: another exporter took the item, or its job ended; nothing to do");
        Ok(Ok(ItemOutcome::LeaseLost))
    }

    /// Records how an item's export ended: progress, a hand-off, a failure.
    async fn record_outcome(
        &self,
        job: &Job,
        item: &WorkItem,
        result: Result<ItemOutcome, Failure>,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        match result {
            Ok(ItemOutcome::Finished { completed }) => {
                summary.items += 1;
                if completed {
                    info!("export complete");
                    summary.complete(job);
                }
            }
            Ok(ItemOutcome::Deadline) => {
                work_items::release(&self.pool, item, &self.owner).await?;
                if let Err(e) = self.queue.send(job.id).await {
                    warn!(error = %e, "could not requeue; the schedule will resume the job");
                }
                info!("deadline near: progress saved, item handed off");
                summary.handed_off.push(job.id);
            }
            Ok(ItemOutcome::Cancelled) => {
                // The job's files are deleted once no exporter holds one of its items.
                work_items::release(&self.pool, item, &self.owner).await?;
                if let Err(e) = self.queue.send(job.id).await {
                    warn!(error = %e, "could not send a wake-up for the cancellation");
                }
            }
            Ok(ItemOutcome::LeaseLost) => {
                work_items::release(&self.pool, item, &self.owner).await?;
                info!("item lost to another exporter (this one was past its lease), or its job stopped");
            }
            Err(Permanent(msg)) => {
                warn!(error = %msg, "export failed");
                let error = jobs::JobError::permanent(msg.to_string());
                self.fail(job, None, &error, summary).await?;
            }
            Err(Transient(e)) => self.record_attempt(job, item, &e, summary).await?,
        }
        Ok(())
    }

    /// A failed attempt: retried after the backoff, or the job fails at its limits; a storage
    /// outage is not an attempt (see `work_items::record_failure`).
    async fn record_attempt(
        &self,
        job: &Job,
        item: &WorkItem,
        e: &EngineError,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        let error = job_error(e);
        let storage_down = matches!(e, EngineError::Storage(s) if s.unavailable());
        if storage_down {
            warn!(error = %error.internal, "storage unavailable; the item waits for it");
        } else {
            warn!(error = %error.internal, "export attempt failed");
        }
        let limits = work_items::RetryLimits {
            max_attempts: self.config.max_attempts,
            storage_outage: self.config.storage_outage,
            backoff: self.retry_backoff,
        };
        let status = work_items::record_failure(
            &self.pool,
            item,
            &self.owner,
            &error,
            storage_down,
            limits,
            self.config.job_retention,
        )
        .await?;
        summary.attempt_failed(job, status);
        Ok(())
    }

    async fn export_item(
        &self,
        job: &Job,
        item: WorkItem,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        // Validated at kick-off; a job stored by another version could still fail here.
        let filters =
            TypeFilters::parse(&job.params.type_filters).map_err(|e| Permanent(e.into()))?;
        let elements = ElementsFilter::new(&job.params.elements);
        let types = work_items::select_item_types(&self.pool, job.id).await?;
        let present = if job.level == ExportLevel::System {
            Vec::new()
        } else {
            resources::select_resource_types(&self.pool).await?
        };
        let layout = JobLayout::new(job, &self.config, types, &present);
        if item.resource_type == BLOCKS_ITEM {
            return self
                .export_blocks(job, item, &layout, &filters, &elements, deadline)
                .await;
        }
        let resource_type = item.resource_type.clone();
        let hi_id = item.hi_id.clone();
        let sel = layout.selection(job, &self.config, &resource_type, hi_id.as_deref());
        let type_wide = layout.selection(job, &self.config, &resource_type, None);
        if !job.params.views.is_empty() {
            let views = views::item_views(&job.params.views, &resource_type)?;
            let format = views::file_format(job.params.view_format.as_ref())?;
            return self
                .export_view_range(item, &sel, &views, &format, deadline)
                .await;
        }
        let transform = RowTransform::new(&resource_type, &filters, &elements);
        self.export_range(item, &sel, &type_wide, &transform, deadline)
            .await
    }

    /// Records an item's finished files and cursor (see `work_items::checkpoint`).
    async fn checkpoint(
        &self,
        item: &WorkItem,
        files: &[ExportFile],
        ranges: &[ReadRange],
    ) -> Result<Checkpointed, Failure> {
        Ok(work_items::checkpoint(
            &self.pool,
            item,
            &self.owner,
            files,
            ranges,
            self.config.job_retention,
        )
        .await?)
    }
}

fn job_error(e: &EngineError) -> jobs::JobError {
    jobs::JobError {
        internal: crate::error_chain(e),
        public: e.public_message().to_string(),
    }
}
