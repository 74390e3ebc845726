//! A failed attempt of an item: retried, or its job failed at a limit.

use std::time::Duration;

use uuid::Uuid;

use super::WorkItem;
use crate::db::jobs::JobError;
use crate::db::{DbError, Pool};
use crate::export::job::Transition;
use crate::export::JobStatus;

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
    // The job's error: the item's, or that its storage stayed unavailable too long.
    let failed = if outage_over {
        JobError::storage_gone(
            limits.storage_outage,
            Some(&error.internal),
            Some(&error.public),
        )
    } else {
        error.clone()
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
