//! A job's life in `export_jobs` after its kick-off: claimed and leased by an exporter,
//! failed, completed, cancelled, retried by an operator, purged. Every status change is an
//! `export::job::Transition`.

use std::time::Duration;

use uuid::Uuid;

use super::{job_from_row, JOB_COLUMNS};
use crate::db::{DbError, Pool};
use crate::export::job::Transition;
use crate::export::{Job, JobStatus};

/// Claims one job that needs coordinating (its items are claimed in `work_items`): Queued or
/// not yet planned (to plan it), or CancellationRequested once none of its items is leased by
/// another exporter (to delete its files). `prefer` is tried first (the job an SQS message
/// named). A claim of a job whose previous owner vanished counts as an attempt.
pub async fn claim_job(
    pool: &Pool,
    owner: &str,
    lease: Duration,
    prefer: Option<Uuid>,
) -> Result<Option<Job>, DbError> {
    claim_job_in(pool, owner, lease, prefer, None).await
}

/// [`claim_job`] by an exporter writing to `storage`: a job kicked off for another storage is
/// left alone. None: any job.
pub async fn claim_job_in(
    pool: &Pool,
    owner: &str,
    lease: Duration,
    prefer: Option<Uuid>,
    storage: Option<&str>,
) -> Result<Option<Job>, DbError> {
    let client = pool.get().await?;
    let lease_secs = lease.as_secs_f64();
    let row = client
        .query_opt(
            &format!(
                "WITH candidate AS (
                     SELECT id FROM export_jobs
                     WHERE (status = 'Queued'
                            OR (status = 'Active' AND NOT planned)
                            -- cancelled once no other exporter holds one of its items
                            OR (status = 'CancellationRequested' AND NOT EXISTS (
                                    SELECT 1 FROM export_work_items w
                                    WHERE w.job_id = export_jobs.id AND w.lease_owner <> $1
                                      AND w.lease_expires_at > now())))
                       AND (lease_expires_at IS NULL OR lease_expires_at < now()
                            OR lease_owner = $1)
                       AND ($4::text IS NULL OR params->>'storage' IS NULL
                            OR params->>'storage' = $4)
                     ORDER BY (id = $3) DESC, created_at
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 UPDATE export_jobs j SET
                     status = CASE WHEN {claim} THEN {active} ELSE j.status END,
                     attempts = j.attempts + CASE WHEN j.lease_owner IS NOT NULL THEN 1 ELSE 0 END,
                     lease_owner = $1,
                     lease_expires_at = now() + make_interval(secs => $2),
                     updated_at = now()
                 FROM candidate WHERE j.id = candidate.id
                 RETURNING {columns}",
                columns = JOB_COLUMNS
                    .split(", ")
                    .map(|c| format!("j.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                claim = Transition::CLAIM.guard("j.status"),
                active = Transition::CLAIM.target(),
            ),
            &[
                &owner,
                &lease_secs,
                &prefer.unwrap_or_else(Uuid::nil),
                &storage,
            ],
        )
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Extends the lease; returns the job's current status, or None when the lease was lost.
pub async fn renew_lease(
    pool: &Pool,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<JobStatus>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "UPDATE export_jobs SET lease_expires_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND lease_owner = $2 RETURNING status",
            &[&id, &owner, &lease.as_secs_f64()],
        )
        .await?;
    Ok(row.and_then(|r| JobStatus::parse(r.get::<_, &str>(0))))
}

/// Gives the job back without counting an attempt (deadline reached, work remains).
pub async fn release_job(pool: &Pool, id: Uuid, owner: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE export_jobs SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner],
        )
        .await?;
    Ok(())
}

/// Records a failed attempt. Below `max_attempts` the job stays Active and is retried after
/// `backoff`; at the cap it becomes Failed. Returns the resulting status.
pub async fn record_failure(
    pool: &Pool,
    id: Uuid,
    owner: &str,
    error: &JobError,
    max_attempts: i32,
    backoff: Duration,
    retention: Duration,
) -> Result<Option<JobStatus>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE export_jobs SET
                 attempts = attempts + 1,
                 error = $3, public_error = $6,
                 status = CASE WHEN {fail} AND attempts + 1 >= $4 THEN {failed} ELSE status END,
                 completed_at = CASE WHEN {fail} AND attempts + 1 >= $4 THEN now() ELSE completed_at END,
                 expires_at = CASE WHEN {fail} AND attempts + 1 >= $4
                                   THEN now() + make_interval(secs => $7) ELSE expires_at END,
                 lease_owner = NULL,
                 lease_expires_at = now() + make_interval(secs => $5),
                 updated_at = now()
             WHERE id = $1 AND lease_owner = $2 RETURNING status",
                fail = Transition::FAIL.guard("status"),
                failed = Transition::FAIL.target(),
            ),
            &[
                &id,
                &owner,
                &error.internal,
                &max_attempts,
                &backoff.as_secs_f64(),
                &error.public,
                &retention.as_secs_f64(),
            ],
        )
        .await?;
    Ok(row.and_then(|r| JobStatus::parse(r.get::<_, &str>(0))))
}

/// Why a job failed: `internal` for operators (logs, `bulk-export jobs`), `public` for the
/// client's status request (never paths, keys or database text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub internal: String,
    pub public: String,
}

impl JobError {
    /// The error of a job whose storage stayed unavailable for `outage`
    /// (STORAGE_OUTAGE_SECONDS), after the last error its item recorded.
    pub fn storage_gone(
        outage: std::time::Duration,
        internal: Option<&str>,
        public: Option<&str>,
    ) -> JobError {
        JobError {
            internal: format!(
                "the storage was unavailable for STORAGE_OUTAGE_SECONDS ({} s); last error: {}",
                outage.as_secs(),
                internal.unwrap_or("a storage call ran past its timeouts")
            ),
            public: format!(
                "the export failed: its storage was unavailable for {} minutes: {}",
                outage.as_secs().div_ceil(60),
                public.unwrap_or("writing the export files failed")
            ),
        }
    }
}

/// Fails a job at once: a problem no retry can fix, or too many attempts. With `owner`, only
/// while that exporter holds the job (planning); without, whatever holds it (an item failed
/// for good: the exporters on its other items stop at their next lease check).
/// A failed job's status and files expire like a completed one's (`retention`).
pub async fn fail_job(
    pool: &Pool,
    id: Uuid,
    owner: Option<&str>,
    error: &JobError,
    retention: Duration,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            &format!(
                "UPDATE export_jobs SET status = {failed}, error = $3, public_error = $4,
                 completed_at = now(), expires_at = now() + make_interval(secs => $5),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND ($2::text IS NULL OR lease_owner = $2) AND {fail}",
                fail = Transition::FAIL.guard("status"),
                failed = Transition::FAIL.target(),
            ),
            &[
                &id,
                &owner,
                &error.internal,
                &error.public,
                &retention.as_secs_f64(),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Why a request can never be exported (a Group that is gone): the client is told as it is.
impl JobError {
    pub fn permanent(message: String) -> JobError {
        JobError {
            internal: message.clone(),
            public: message,
        }
    }
}

/// Active → Complete, with its expiry.
pub async fn complete_job(
    pool: &Pool,
    id: Uuid,
    owner: &str,
    retention: Duration,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            &format!(
                "UPDATE export_jobs SET status = {complete}, completed_at = now(),
                 expires_at = now() + make_interval(secs => $3),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND {guard}",
                complete = Transition::COMPLETE.target(),
                guard = Transition::COMPLETE.guard("status"),
            ),
            &[&id, &owner, &retention.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// Queued|Active → CancellationRequested; Complete|Failed → deleted (files purged later).
/// Returns false when there is nothing to cancel or delete (unknown, already cancelled/deleted).
pub async fn request_cancellation(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            &format!(
                "UPDATE export_jobs SET
                 status = CASE WHEN {running} THEN {requested} ELSE status END,
                 deleted_at = CASE WHEN status IN ('Complete', 'Failed') THEN now() ELSE deleted_at END,
                 lease_expires_at = CASE WHEN {running} THEN lease_expires_at ELSE NULL END,
                 updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL
               AND ({running} OR status IN ('Complete', 'Failed'))",
                running = Transition::REQUEST_CANCELLATION.guard("status"),
                requested = Transition::REQUEST_CANCELLATION.target(),
            ),
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// Failed → exported again from where it stopped (an operator's retry, `bulk-export jobs
/// --retry`): the same transaction time, the finished parts kept; the failed parts' attempts and
/// errors cleared. Only before the job's files expire (their purge would race the retry).
/// Returns false when the job is not a Failed one whose files are still there.
pub async fn retry_failed(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            &format!(
                "UPDATE export_jobs SET
                 status = CASE WHEN planned THEN {planned} ELSE {unplanned} END,
                 attempts = 0, error = NULL, public_error = NULL, completed_at = NULL,
                 expires_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND {guard} AND deleted_at IS NULL
               AND files_purged_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                planned = Transition::RETRY_PLANNED.target(),
                unplanned = Transition::RETRY_UNPLANNED.target(),
                // Both retries leave Failed.
                guard = Transition::RETRY_PLANNED.guard("status"),
            ),
            &[&id],
        )
        .await?;
    if n == 1 {
        tx.execute(
            "UPDATE export_work_items SET attempts = 0, error = NULL, public_error = NULL,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE job_id = $1 AND NOT done",
            &[&id],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

/// CancellationRequested → Cancelled, after the files are gone.
pub async fn mark_cancelled(pool: &Pool, id: Uuid, owner: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            &format!(
                "UPDATE export_jobs SET status = {cancelled}, files_purged_at = now(),
                 completed_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND {guard}",
                cancelled = Transition::CANCELLED.target(),
                guard = Transition::CANCELLED.guard("status"),
            ),
            &[&id, &owner],
        )
        .await?;
    Ok(n == 1)
}

/// Finished jobs whose files must go: deleted by the client or past their expiry.
pub async fn select_jobs_to_purge(
    pool: &Pool,
    limit: i64,
    storage: Option<&str>,
) -> Result<Vec<Uuid>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id FROM export_jobs
             WHERE files_purged_at IS NULL AND status IN ('Complete', 'Failed')
               AND (deleted_at IS NOT NULL OR expires_at < now())
               AND ($2::text IS NULL OR params->>'storage' IS NULL OR params->>'storage' = $2)
             ORDER BY updated_at LIMIT $1",
            &[&limit, &storage],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn mark_purged(pool: &Pool, id: Uuid) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE export_jobs SET files_purged_at = now(), updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    // What only a running job needs: its polls, patients, references and read snapshots
    // (a Patient-level export of a million patients leaves a million rows here otherwise).
    for table in [
        "export_job_polls",
        "export_job_patients",
        "export_job_refs",
        "export_read_ranges",
    ] {
        client
            .execute(&format!("DELETE FROM {table} WHERE job_id = $1"), &[&id])
            .await?;
    }
    Ok(())
}
