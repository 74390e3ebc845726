//! `export_work_items`: the unit of claim. Planning splits a job into items (a key range of one
//! resource type, or the patient blocks of organizeOutputBy=Patient); any exporter claims an
//! item with a lease, checkpoints it after every file and retries it on its own. The last
//! item's last checkpoint completes the job, in the same transaction (the manifest is assembled
//! exactly once; an item's checkpoint writes its files' rows (`super::files`) in the same
//! transaction.

use std::time::Duration;

use uuid::Uuid;

use super::jobs::JobError;
use super::{DbError, Pool};
use crate::export::job::Transition;
use crate::export::manifest::ExportFile;
use crate::export::JobStatus;

/// The work item of an `organizeOutputBy=Patient` job (not a resource type: starts with `_`).
pub const BLOCKS_ITEM: &str = "_blocks";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub job_id: Uuid,
    pub resource_type: String,
    /// Which key range of the type (0 when the type is not split).
    pub part: i32,
    /// Ids in (`lo_id`, `hi_id`]; `hi_id` None: to the end of the type.
    pub lo_id: String,
    pub hi_id: Option<String>,
    pub phase: Phase,
    /// The last id durably written (exclusive lower bound for the next read).
    pub cursor_id: String,
    pub next_file_seq: i32,
    pub done: bool,
    /// Failures without progress (a crashed owner's lease counts when the item is reclaimed),
    /// storage outages aside.
    pub attempts: i32,
    /// Since when its storage has been unavailable, without progress since (see
    /// [`record_failure`]).
    pub storage_down_since: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
    pub public_error: Option<String>,
}

/// Which read of its range an item is at (phase 0 or 1): each is one streamed statement
/// (`reads::read_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Phase 0: the current versions.
    Current,
    /// Phase 1: the versions current at the transaction time of resources changed since, from
    /// history (unless phase 0 exported them).
    History,
}

impl Phase {
    /// The `export_work_items.phase` SMALLINT.
    fn column(self) -> i16 {
        match self {
            Phase::Current => 0,
            Phase::History => 1,
        }
    }

    fn from_column(value: i16) -> Result<Phase, DbError> {
        match value {
            0 => Ok(Phase::Current),
            1 => Ok(Phase::History),
            _ => Err(DbError::UnknownValue {
                column: "phase",
                value: value.to_string(),
            }),
        }
    }
}

impl WorkItem {
    /// The only item of its type (the type was not split): files keep the plain
    /// `<Type>-<seq>.ndjson` names.
    pub fn whole_type(&self) -> bool {
        self.part == 0 && self.hi_id.is_none()
    }

    /// The item that reaches the end of its type (it also writes the type's deleted[] and
    /// error files).
    pub fn is_last_part(&self) -> bool {
        self.hi_id.is_none()
    }

    /// The name of this item's file number `seq`: `Patient-0001.ndjson`, or for a type split
    /// into parts `Observation-003-0001.ndjson` (names sort in key order).
    pub fn file_name(&self, seq: i32) -> String {
        if self.whole_type() {
            format!("{}-{seq:04}.ndjson", self.resource_type)
        } else {
            format!("{}-{:03}-{seq:04}.ndjson", self.resource_type, self.part)
        }
    }
}

const ITEM_COLUMNS: &str = "job_id, resource_type, part, lo_id, hi_id, phase, cursor_id, \
     next_file_seq, done, attempts, storage_down_since, error, public_error";

fn item_from_row(r: &tokio_postgres::Row) -> Result<WorkItem, DbError> {
    Ok(WorkItem {
        job_id: r.get("job_id"),
        resource_type: r.get("resource_type"),
        part: r.get("part"),
        lo_id: r.get("lo_id"),
        hi_id: r.get("hi_id"),
        phase: Phase::from_column(r.get("phase"))?,
        cursor_id: r.get("cursor_id"),
        next_file_seq: r.get("next_file_seq"),
        done: r.get("done"),
        attempts: r.get("attempts"),
        storage_down_since: r.get("storage_down_since"),
        error: r.get("error"),
        public_error: r.get("public_error"),
    })
}

/// One item planned for a job: a key range of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub resource_type: String,
    pub part: i32,
    pub lo_id: String,
    pub hi_id: Option<String>,
    /// Planned as already done (the per-type items of organizeOutputBy=Patient only record
    /// the job's types).
    pub done: bool,
}

/// Inserts a job's planned items (in the planning transaction).
pub async fn insert_items(
    client: &impl deadpool_postgres::GenericClient,
    job_id: Uuid,
    items: &[NewItem],
) -> Result<(), DbError> {
    let types: Vec<&str> = items.iter().map(|i| i.resource_type.as_str()).collect();
    let parts: Vec<i32> = items.iter().map(|i| i.part).collect();
    let los: Vec<&str> = items.iter().map(|i| i.lo_id.as_str()).collect();
    let his: Vec<Option<&str>> = items.iter().map(|i| i.hi_id.as_deref()).collect();
    let done: Vec<bool> = items.iter().map(|i| i.done).collect();
    client
        .execute(
            "INSERT INTO export_work_items (job_id, resource_type, part, lo_id, hi_id, cursor_id, done)
             SELECT $1, t, p, lo, hi, lo, d
             FROM unnest($2::text[], $3::int4[], $4::text[], $5::text[], $6::bool[]) AS x(t, p, lo, hi, d)
             ON CONFLICT DO NOTHING",
            &[&job_id, &types, &parts, &los, &his, &done],
        )
        .await?;
    Ok(())
}

pub async fn select_work_items(pool: &Pool, job_id: Uuid) -> Result<Vec<WorkItem>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM export_work_items WHERE job_id = $1
                 ORDER BY resource_type, part"
            ),
            &[&job_id],
        )
        .await?;
    rows.iter().map(item_from_row).collect()
}

/// The job's resource types (its items', without organizeOutputBy's blocks item).
pub async fn select_item_types(pool: &Pool, job_id: Uuid) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT DISTINCT resource_type FROM export_work_items
             WHERE job_id = $1 AND resource_type NOT LIKE '\\_%' ORDER BY 1",
        )
        .await?;
    let rows = client.query(&stmt, &[&job_id]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Claims one open item of an Active, planned job whose lease is free (never taken, released,
/// expired, or this owner's own from before a restart). Items of `prefer` come first, then the
/// oldest job's, in key order, so every exporter works on the oldest export first. Reclaiming an
/// item whose owner vanished counts as an attempt.
pub async fn claim_item(
    pool: &Pool,
    owner: &str,
    lease: Duration,
    prefer: Option<Uuid>,
    storage: Option<&str>,
) -> Result<Option<WorkItem>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "WITH candidate AS (
                 SELECT w.job_id, w.resource_type, w.part
                 FROM export_work_items w JOIN export_jobs j ON j.id = w.job_id
                 WHERE NOT w.done AND j.status = 'Active' AND j.planned
                   AND (w.lease_expires_at IS NULL OR w.lease_expires_at < now()
                        OR w.lease_owner = $1)
                   AND ($4::text IS NULL OR j.params->>'storage' IS NULL
                        OR j.params->>'storage' = $4)
                 ORDER BY (w.job_id = $3) DESC, j.created_at, w.resource_type, w.part
                 LIMIT 1
                 FOR UPDATE OF w SKIP LOCKED)
             UPDATE export_work_items w SET
                 attempts = w.attempts + CASE WHEN w.lease_owner IS NOT NULL
                                               AND w.storage_down_since IS NULL THEN 1 ELSE 0 END,
                 lease_owner = $1,
                 lease_expires_at = now() + make_interval(secs => $2),
                 updated_at = now()
             FROM candidate
             WHERE (w.job_id, w.resource_type, w.part)
                 = (candidate.job_id, candidate.resource_type, candidate.part)
             RETURNING {}",
            ITEM_COLUMNS
                .split(", ")
                .map(|c| format!("w.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &owner,
                &lease.as_secs_f64(),
                &prefer.unwrap_or_else(Uuid::nil),
                &storage,
            ],
        )
        .await?;
    row.as_ref().map(item_from_row).transpose()
}

/// Marks the item's storage as unavailable from now (unless it already is): its owner's
/// storage call is overdue and its lease is left to lapse, so the next owner's claim is not an
/// attempt.
pub async fn mark_storage_down(pool: &Pool, item: &WorkItem, owner: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE export_work_items SET storage_down_since = coalesce(storage_down_since, now())
             WHERE job_id = $1 AND resource_type = $2 AND part = $3 AND lease_owner = $4",
            &[&item.job_id, &item.resource_type, &item.part, &owner],
        )
        .await?;
    Ok(())
}

/// Extends the item's lease; returns its job's status, or None when the lease was lost.
pub async fn renew_lease(
    pool: &Pool,
    item: &WorkItem,
    owner: &str,
    lease: Duration,
) -> Result<Option<JobStatus>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE export_work_items w SET lease_expires_at = now() + make_interval(secs => $5)
             FROM export_jobs j
             WHERE w.job_id = $1 AND w.resource_type = $2 AND w.part = $3 AND w.lease_owner = $4
               AND j.id = w.job_id
             RETURNING j.status",
        )
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &item.job_id,
                &item.resource_type,
                &item.part,
                &owner,
                &lease.as_secs_f64(),
            ],
        )
        .await?;
    Ok(row.and_then(|r| JobStatus::parse(r.get::<_, &str>(0))))
}

/// Gives the item back without counting an attempt (deadline reached, or the job is being
/// cancelled).
pub async fn release(pool: &Pool, item: &WorkItem, owner: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE export_work_items SET lease_owner = NULL, lease_expires_at = NULL,
                 updated_at = now()
             WHERE job_id = $1 AND resource_type = $2 AND part = $3 AND lease_owner = $4",
            &[&item.job_id, &item.resource_type, &item.part, &owner],
        )
        .await?;
    Ok(())
}

/// When a failed item gives up: after `max_attempts` failed attempts, or when its storage has
/// been unavailable for `storage_outage`.
#[derive(Debug, Clone, Copy)]
pub struct RetryLimits {
    pub max_attempts: i32,
    pub storage_outage: Duration,
    /// Wait before the item is taken again.
    pub backoff: Duration,
}

/// Records a failed attempt of an item. Below the limits the item is retried after the backoff
/// (by any exporter); at a limit its job becomes Failed, in the same transaction. A failure
/// because the storage is unavailable (`storage_down`) is not an attempt: it starts (or
/// continues) the item's outage, which gives up after `limits.storage_outage`. The job row
/// shows the last error and the most attempts of any item. Returns the job's status afterwards
/// (None when the item was no longer this owner's).
pub async fn record_failure(
    pool: &Pool,
    item: &WorkItem,
    owner: &str,
    error: &JobError,
    storage_down: bool,
    limits: RetryLimits,
    retention: Duration,
) -> Result<Option<JobStatus>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some((attempts, outage_over)) =
        update_failed_item(&tx, item, owner, error, storage_down, limits).await?
    else {
        return Ok(None);
    };
    let give_up = attempts >= limits.max_attempts || outage_over;
    let internal = if outage_over {
        format!(
            "the storage was unavailable for STORAGE_OUTAGE_SECONDS ({} s); last error: {}",
            limits.storage_outage.as_secs(),
            error.internal
        )
    } else {
        error.internal.clone()
    };
    let failed = JobError {
        internal,
        public: error.public.clone(),
    };
    let status =
        record_job_failure(&tx, item.job_id, attempts, &failed, give_up, retention).await?;
    tx.commit().await?;
    Ok(status)
}

/// Records the failure on the item and gives up its lease until the backoff has passed:
/// its attempts and whether its storage outage has lasted `limits.storage_outage` (None when
/// the item is not this owner's).
async fn update_failed_item(
    tx: &deadpool_postgres::Transaction<'_>,
    item: &WorkItem,
    owner: &str,
    error: &JobError,
    storage_down: bool,
    limits: RetryLimits,
) -> Result<Option<(i32, bool)>, DbError> {
    let row = tx
        .query_opt(
            "UPDATE export_work_items SET
                 attempts = attempts + CASE WHEN $8 THEN 0 ELSE 1 END,
                 storage_down_since = CASE WHEN $8 THEN coalesce(storage_down_since, now())
                                           ELSE storage_down_since END,
                 error = $5, public_error = $6,
                 lease_owner = NULL, lease_expires_at = now() + make_interval(secs => $7),
                 updated_at = now()
             WHERE job_id = $1 AND resource_type = $2 AND part = $3 AND lease_owner = $4
             RETURNING attempts,
                 coalesce(now() - storage_down_since >= make_interval(secs => $9), false)",
            &[
                &item.job_id,
                &item.resource_type,
                &item.part,
                &owner,
                &error.internal,
                &error.public,
                &limits.backoff.as_secs_f64(),
                &storage_down,
                &limits.storage_outage.as_secs_f64(),
            ],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Records an item's failure on its job (the error, the most attempts), and with `give_up`
/// makes it Failed, expiring after `retention`. Returns the job's status afterwards.
async fn record_job_failure(
    tx: &deadpool_postgres::Transaction<'_>,
    job_id: Uuid,
    attempts: i32,
    error: &JobError,
    give_up: bool,
    retention: Duration,
) -> Result<Option<JobStatus>, DbError> {
    let status = tx
        .query_opt(
            &format!(
                "UPDATE export_jobs SET
                 attempts = greatest(attempts, $2), error = $3, public_error = $4,
                 status = CASE WHEN {fail} AND $5 THEN {failed} ELSE status END,
                 completed_at = CASE WHEN {fail} AND $5 THEN now() ELSE completed_at END,
                 expires_at = CASE WHEN {fail} AND $5
                                   THEN now() + make_interval(secs => $6) ELSE expires_at END,
                 updated_at = now()
             WHERE id = $1 RETURNING status",
                fail = Transition::FAIL.guard("status"),
                failed = Transition::FAIL.target(),
            ),
            &[
                &job_id,
                &attempts,
                &error.internal,
                &error.public,
                &give_up,
                &retention.as_secs_f64(),
            ],
        )
        .await?;
    Ok(status.and_then(|r| JobStatus::parse(r.get::<_, &str>(0))))
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointed {
    /// The files and the cursor are durable.
    Saved,
    /// ... and this was the job's last open item: the job is Complete.
    Completed,
    /// The item is no longer this owner's (its lease expired and another exporter took it):
    /// nothing was recorded.
    LeaseLost,
}

/// Records finished files and advances the item's cursor in one transaction, so a crash
/// either keeps both or neither (the file is then rewritten under the same name). When the
/// item is done and it was the job's last open item, the job becomes Complete in the same
/// transaction (with its expiry after `retention`): the manifest is assembled exactly once.
pub async fn checkpoint(
    pool: &Pool,
    item: &WorkItem,
    owner: &str,
    files: &[ExportFile],
    ranges: &[crate::db::reads::ReadRange],
    retention: Duration,
) -> Result<Checkpointed, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Every statement of a checkpoint is prepared once per connection: a parse is a round trip,
    // and an export checkpoints each of its items at least once.
    if item.done {
        // Item checkpoints of one job that finish items take turns: the last one sees every
        // other item done.
        let lock = tx
            .prepare_cached("SELECT 1 FROM export_jobs WHERE id = $1 FOR UPDATE")
            .await?;
        tx.execute(&lock, &[&item.job_id]).await?;
    }
    let progress = !files.is_empty();
    if !update_checkpointed_item(&tx, item, owner, progress).await? {
        tx.rollback().await?;
        return Ok(Checkpointed::LeaseLost);
    }
    super::files::insert_files(&tx, item.job_id, files).await?;
    insert_read_ranges(&tx, item, ranges).await?;
    // Progress: attempts count failures without progress, so a long export on a flaky network
    // does not fail after a few blips that each cost nothing.
    if progress {
        let reset = tx
            .prepare_cached("UPDATE export_jobs SET attempts = 0 WHERE id = $1 AND attempts > 0")
            .await?;
        tx.execute(&reset, &[&item.job_id]).await?;
    }
    let result = if item.done && complete_job_if_done(&tx, item.job_id, retention).await? {
        Checkpointed::Completed
    } else {
        Checkpointed::Saved
    };
    tx.commit().await?;
    Ok(result)
}

/// Stores the item's phase, cursor, next file number and whether it is done (then its lease
/// ends); `progress` (files were recorded) resets its attempts and storage outage. False when
/// the item is no longer this owner's.
async fn update_checkpointed_item(
    tx: &deadpool_postgres::Transaction<'_>,
    item: &WorkItem,
    owner: &str,
    progress: bool,
) -> Result<bool, DbError> {
    let update = tx
        .prepare_cached(
            "UPDATE export_work_items SET phase = $5, cursor_id = $6, next_file_seq = $7, done = $8,
                 attempts = CASE WHEN $9 THEN 0 ELSE attempts END,
                 storage_down_since = CASE WHEN $9 THEN NULL ELSE storage_down_since END,
                 lease_owner = CASE WHEN $8 THEN NULL ELSE lease_owner END,
                 lease_expires_at = CASE WHEN $8 THEN NULL ELSE lease_expires_at END,
                 updated_at = now()
             WHERE job_id = $1 AND resource_type = $2 AND part = $3 AND lease_owner = $4",
        )
        .await?;
    let n = tx
        .execute(
            &update,
            &[
                &item.job_id,
                &item.resource_type,
                &item.part,
                &owner,
                &item.phase.column(),
                &item.cursor_id,
                &item.next_file_seq,
                &item.done,
                &progress,
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Records the snapshots phase 0 read the item's ranges under (`export_read_ranges`).
async fn insert_read_ranges(
    tx: &deadpool_postgres::Transaction<'_>,
    item: &WorkItem,
    ranges: &[crate::db::reads::ReadRange],
) -> Result<(), DbError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let after: Vec<&str> = ranges.iter().map(|r| r.after_id.as_str()).collect();
    let upto: Vec<Option<&str>> = ranges.iter().map(|r| r.upto_id.as_deref()).collect();
    let snaps: Vec<&str> = ranges.iter().map(|r| r.snapshot.as_str()).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO export_read_ranges (job_id, resource_type, after_id, upto_id, snap)
             SELECT $1, $2, a, u, s::pg_snapshot
             FROM unnest($3::text[], $4::text[], $5::text[]) AS x(a, u, s)",
        )
        .await?;
    tx.execute(
        &insert,
        &[&item.job_id, &item.resource_type, &after, &upto, &snaps],
    )
    .await?;
    Ok(())
}

/// Makes the job Complete (expiring after `retention`) when none of its items is open;
/// whether it did.
async fn complete_job_if_done(
    tx: &deadpool_postgres::Transaction<'_>,
    job_id: Uuid,
    retention: Duration,
) -> Result<bool, DbError> {
    let complete = tx
        .prepare_cached(&format!(
            "UPDATE export_jobs SET status = {complete}, completed_at = now(),
                 expires_at = now() + make_interval(secs => $2),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND {guard}
               AND NOT EXISTS (SELECT 1 FROM export_work_items
                               WHERE job_id = $1 AND NOT done)",
            complete = Transition::COMPLETE.target(),
            guard = Transition::COMPLETE.guard("status"),
        ))
        .await?;
    let completed = tx
        .execute(&complete, &[&job_id, &retention.as_secs_f64()])
        .await?;
    Ok(completed == 1)
}
