//! `export_work_items`: the unit of claim. Planning splits a job into items (a key range of one
//! resource type, or the patient blocks of organizeOutputBy=Patient); any exporter claims an
//! item with a lease, checkpoints it after every file (`checkpoint`: its files' rows,
//! `super::files`, in the same transaction) and retries it on its own (`failure`). The last
//! item's last checkpoint completes the job, in the same transaction: the manifest is assembled
//! exactly once.

use std::time::Duration;

use uuid::Uuid;

use super::{DbError, Pool};
use crate::export::JobStatus;

mod checkpoint;
mod failure;

pub use checkpoint::{checkpoint, Checkpointed};
pub use failure::{record_failure, RetryLimits};

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
