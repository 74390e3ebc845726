//! `export_jobs` (and `export_job_patients`): the job table is the source of truth and the queue.

use std::time::Duration;

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, Pool};
use crate::export::{ExportLevel, ExportParams, Job, JobStatus};

const JOB_COLUMNS: &str = "id, level, group_id, params, request_url, client_id, transaction_time, \
     status, planned, attempts, error, public_error, created_at, completed_at, expires_at, deleted_at";

fn job_from_row(row: &Row) -> Result<Job, DbError> {
    let level: String = row.get("level");
    let status: String = row.get("status");
    let params: serde_json::Value = row.get("params");
    Ok(Job {
        id: row.get("id"),
        level: ExportLevel::parse(&level).ok_or_else(|| DbError::Row(format!("level {level}")))?,
        group_id: row.get("group_id"),
        params: serde_json::from_value(params).map_err(|e| DbError::Row(e.to_string()))?,
        request_url: row.get("request_url"),
        client_id: row.get("client_id"),
        transaction_time: row.get("transaction_time"),
        status: JobStatus::parse(&status)
            .ok_or_else(|| DbError::Row(format!("status {status}")))?,
        planned: row.get("planned"),
        attempts: row.get("attempts"),
        error: row.get("error"),
        public_error: row.get("public_error"),
        created_at: row.get("created_at"),
        completed_at: row.get("completed_at"),
        expires_at: row.get("expires_at"),
        deleted_at: row.get("deleted_at"),
    })
}

pub struct NewJob<'a> {
    pub level: ExportLevel,
    pub group_id: Option<&'a str>,
    pub params: &'a ExportParams,
    pub request_url: &'a str,
    pub client_id: Option<&'a str>,
}

/// Per-client limits checked when a job is inserted.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Queued, Active or CancellationRequested exports.
    pub running: i64,
    /// Exports whose status and files are still kept (not deleted, not expired), any state.
    pub stored: i64,
}

/// Why a job was not inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitReached {
    Running(i64),
    Stored(i64),
}

/// Inserts a Queued job (its transaction time is the database's `now()`) unless the client is
/// at one of its limits. Exact under concurrent kick-offs: the count and the insert run in one
/// transaction holding the client's advisory lock.
pub async fn insert_job(
    pool: &Pool,
    job: NewJob<'_>,
    limits: JobLimits,
) -> Result<Result<Job, LimitReached>, DbError> {
    let mut client = pool.get().await?;
    let params = serde_json::to_value(job.params).map_err(|e| DbError::Row(e.to_string()))?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(7417002, hashtext(coalesce($1::text, '')))",
        &[&job.client_id],
    )
    .await?;
    let counts = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE status IN ('Queued', 'Active', 'CancellationRequested')),
                    count(*) FILTER (WHERE deleted_at IS NULL
                                       AND (expires_at IS NULL OR expires_at > now()))
             FROM export_jobs WHERE client_id IS NOT DISTINCT FROM $1",
            &[&job.client_id],
        )
        .await?;
    let (running, stored): (i64, i64) = (counts.get(0), counts.get(1));
    if running >= limits.running {
        return Ok(Err(LimitReached::Running(running)));
    }
    if stored >= limits.stored {
        return Ok(Err(LimitReached::Stored(stored)));
    }
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO export_jobs (id, level, group_id, params, request_url, client_id,
                     transaction_time, status)
                 VALUES ($1, $2, $3, $4, $5, $6, now(), 'Queued') RETURNING {JOB_COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &job.level.as_str(),
                &job.group_id,
                &params,
                &job.request_url,
                &job.client_id,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(Ok(job_from_row(&row)?))
}

/// The newest `limit` jobs, newest first (`bulk-export jobs list`).
pub async fn list_jobs(pool: &Pool, limit: i64) -> Result<Vec<Job>, DbError> {
    let client = pool.get().await?;
    client
        .query(
            &format!("SELECT {JOB_COLUMNS} FROM export_jobs ORDER BY created_at DESC LIMIT $1"),
            &[&limit],
        )
        .await?
        .iter()
        .map(job_from_row)
        .collect()
}

/// A job as a status poll needs it: every column but only the parameters the manifest uses
/// (a poll never reads the whole stored parameter list).
pub async fn get_job_for_status(pool: &Pool, id: Uuid) -> Result<Option<Job>, DbError> {
    let client = pool.get().await?;
    let columns = JOB_COLUMNS.replace(
        "params,",
        "jsonb_strip_nulls(jsonb_build_object('_outputFormat', params->'_outputFormat', \
         '_since', params->'_since', 'organizeOutputBy', params->'organizeOutputBy')) AS params,",
    );
    let row = client
        .query_opt(
            &format!("SELECT {columns} FROM export_jobs WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

pub async fn get_job(pool: &Pool, id: Uuid) -> Result<Option<Job>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM export_jobs WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

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
                     ORDER BY (id = $3) DESC, created_at
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 UPDATE export_jobs j SET
                     status = CASE WHEN j.status = 'Queued' THEN 'Active' ELSE j.status END,
                     attempts = j.attempts + CASE WHEN j.lease_owner IS NOT NULL THEN 1 ELSE 0 END,
                     lease_owner = $1,
                     lease_expires_at = now() + make_interval(secs => $2),
                     updated_at = now()
                 FROM candidate WHERE j.id = candidate.id
                 RETURNING {}",
                JOB_COLUMNS
                    .split(", ")
                    .map(|c| format!("j.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&owner, &lease_secs, &prefer.unwrap_or_else(Uuid::nil)],
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
            "UPDATE export_jobs SET
                 attempts = attempts + 1,
                 error = $3, public_error = $6,
                 status = CASE WHEN status = 'Active' AND attempts + 1 >= $4 THEN 'Failed' ELSE status END,
                 completed_at = CASE WHEN status = 'Active' AND attempts + 1 >= $4 THEN now() ELSE completed_at END,
                 expires_at = CASE WHEN status = 'Active' AND attempts + 1 >= $4
                                   THEN now() + make_interval(secs => $7) ELSE expires_at END,
                 lease_owner = NULL,
                 lease_expires_at = now() + make_interval(secs => $5),
                 updated_at = now()
             WHERE id = $1 AND lease_owner = $2 RETURNING status",
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
            "UPDATE export_jobs SET status = 'Failed', error = $3, public_error = $4,
                 completed_at = now(), expires_at = now() + make_interval(secs => $5),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND ($2::text IS NULL OR lease_owner = $2)
               AND status IN ('Queued', 'Active')",
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
            "UPDATE export_jobs SET status = 'Complete', completed_at = now(),
                 expires_at = now() + make_interval(secs => $3),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND status = 'Active'",
            &[&id, &owner, &retention.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// The patients of a Patient- or Group-level job.
#[derive(Debug, Clone, Copy)]
pub enum PatientSet<'a> {
    /// System level: no patient scope.
    None,
    /// Every current Patient.
    All,
    /// The Patients a Group's `Group.member` references.
    Group(&'a str),
    /// The `patient` parameter: these Patients (that exist and, with a group, are members).
    Listed {
        ids: &'a [String],
        group: Option<&'a str>,
    },
}

/// What planning knows of the data it splits (see `export::engine::planner`).
#[derive(Debug, Clone, Default)]
pub struct DataSizes {
    /// Share of all Patients that are the job's (1 at system level).
    pub fraction: f64,
    /// Bytes of the resources table (heap and TOAST).
    pub table_bytes: u64,
    /// Sampled (type, id, resource bytes), ordered by type and id; empty when the job's data
    /// is estimated to fit one item per type (then nothing is sampled).
    pub samples: Vec<(String, String, i64)>,
    /// Bytes a sampled byte stands for (100 / sample percentage).
    pub scale: f64,
}

/// Rows sampled to split types into items: enough for ranges within a few percent of their
/// target size, few enough that planning a 4-million-row export reads ~1% of the table.
const SAMPLE_ROWS: f64 = 50_000.0;

/// Marks the job planned, in one transaction: stores its patients, measures its data (sampling
/// only when it is larger than `item_bytes`) and stores the work items `split` makes of it.
/// Returns the number of open items.
/// The references a job follows to its AdditionalResources, written once at planning (a Group
/// or listed patients: `export_job_refs`): from its patients' compartment resources of
/// `source_types` that are current at the transaction time (and changed after `since`), to
/// resources of `target_types`.
#[derive(Debug, Clone)]
pub struct JobRefs<'a> {
    pub source_types: &'a [String],
    pub target_types: &'a [String],
    pub transaction_time: chrono::DateTime<chrono::Utc>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn mark_planned(
    pool: &Pool,
    id: Uuid,
    resource_types: &[String],
    patients: PatientSet<'_>,
    refs: Option<JobRefs<'_>>,
    item_bytes: u64,
    split: impl FnOnce(&DataSizes) -> Vec<crate::db::work_items::NewItem>,
) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Only Patients that exist count, so a Group member can never pull in another Group.
    const GROUP_MEMBERS: &str = "SELECT f.target_id FROM resource_refs f
         WHERE f.source_type = 'Group' AND f.source_id = $2 AND f.target_type = 'Patient'";
    let added = match patients {
        PatientSet::None => 0,
        PatientSet::All => {
            tx.execute(
                "INSERT INTO export_job_patients (job_id, patient_id)
                 SELECT $1, id FROM resources WHERE resource_type = 'Patient' AND NOT deleted
                 ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await?
        }
        PatientSet::Group(group) => {
            tx.execute(
                &format!(
                    "INSERT INTO export_job_patients (job_id, patient_id)
                     SELECT $1, p.id FROM resources p
                     WHERE p.resource_type = 'Patient' AND NOT p.deleted AND p.id IN ({GROUP_MEMBERS})
                     ON CONFLICT DO NOTHING"
                ),
                &[&id, &group],
            )
            .await?
        }
        PatientSet::Listed { ids, group } => {
            tx.execute(
                &format!(
                    "INSERT INTO export_job_patients (job_id, patient_id)
                     SELECT $1, p.id FROM resources p
                     WHERE p.resource_type = 'Patient' AND NOT p.deleted AND p.id = ANY($3)
                       AND ($2::text IS NULL OR p.id IN ({GROUP_MEMBERS}))
                     ON CONFLICT DO NOTHING"
                ),
                &[&id, &group, &ids],
            )
            .await?
        }
    };
    if let Some(r) = &refs {
        // Written with the items, in the same transaction: no item reads before they are there.
        tx.execute(
            "INSERT INTO export_job_refs (job_id, target_type, target_id, source_type, source_id)
             SELECT DISTINCT $1::uuid, f.target_type, f.target_id, f.source_type, f.source_id
             FROM export_job_patients jp
             JOIN compartment c ON c.patient_id = jp.patient_id AND c.resource_type = ANY($2)
             JOIN resource_refs f ON f.source_type = c.resource_type AND f.source_id = c.resource_id
                  AND f.target_type = ANY($3)
             JOIN resources s ON s.resource_type = f.source_type AND s.id = f.source_id
             WHERE jp.job_id = $1 AND NOT s.deleted AND s.last_updated <= $4
               AND ($5::timestamptz IS NULL OR s.last_updated > $5)",
            &[
                &id,
                &r.source_types,
                &r.target_types,
                &r.transaction_time,
                &r.since,
            ],
        )
        .await?;
    }
    let mut sizes = DataSizes {
        fraction: 1.0,
        ..Default::default()
    };
    if !matches!(patients, PatientSet::None) {
        let all: i64 = tx
            .query_one(
                "SELECT count(*) FROM resources WHERE resource_type = 'Patient' AND NOT deleted",
                &[],
            )
            .await?
            .get(0);
        sizes.fraction = if all == 0 {
            0.0
        } else {
            added as f64 / all as f64
        };
    }
    let row = tx
        .query_one(
            "SELECT pg_table_size('resources')::int8, greatest(reltuples, 0)::float8
             FROM pg_class WHERE oid = 'resources'::regclass",
            &[],
        )
        .await?;
    let (table_bytes, tuples): (i64, f64) = (row.get(0), row.get(1));
    sizes.table_bytes = table_bytes.max(0) as u64;
    if sizes.table_bytes as f64 * sizes.fraction > item_bytes as f64 && !resource_types.is_empty() {
        // A fixed seed: the same data gives the same plan (and the same files), however many
        // exporters then share the work.
        let percent = if tuples <= SAMPLE_ROWS {
            100.0
        } else {
            (100.0 * SAMPLE_ROWS / tuples).clamp(0.01, 100.0)
        };
        let rows = tx
            .query(
                "SELECT resource_type, id, octet_length(resource)::int8 + 1
                 FROM resources TABLESAMPLE SYSTEM ($1::float4) REPEATABLE (0)
                 WHERE resource_type = ANY($2) AND NOT deleted
                 ORDER BY resource_type, id",
                &[&(percent as f32), &resource_types],
            )
            .await?;
        sizes.samples = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        sizes.scale = 100.0 / percent;
    }
    let items = split(&sizes);
    crate::db::work_items::insert_items(&tx, id, &items).await?;
    tx.execute(
        "UPDATE export_jobs SET planned = true, lease_owner = NULL, lease_expires_at = NULL,
             updated_at = now()
         WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    // The page queries join this table; planned with a stale row count (autovacuum lags) they
    // read every member of a type on every page: a Patient export of 1,000 patients did not
    // finish in 6 minutes, and takes 9 s with fresh statistics (docs/BENCHMARKS.md). ANALYZE
    // samples at most 30,000 rows, so this stays cheap however many jobs there are.
    if added > 0 {
        client.batch_execute("ANALYZE export_job_patients").await?;
    }
    Ok(items.iter().filter(|i| !i.done).count())
}

/// Queued|Active → CancellationRequested; Complete|Failed → deleted (files purged later).
/// Returns false when there is nothing to cancel or delete (unknown, already cancelled/deleted).
pub async fn request_cancellation(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE export_jobs SET
                 status = CASE WHEN status IN ('Queued', 'Active') THEN 'CancellationRequested' ELSE status END,
                 deleted_at = CASE WHEN status IN ('Complete', 'Failed') THEN now() ELSE deleted_at END,
                 lease_expires_at = CASE WHEN status IN ('Queued', 'Active') THEN lease_expires_at ELSE NULL END,
                 updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL
               AND status IN ('Queued', 'Active', 'Complete', 'Failed')",
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
            "UPDATE export_jobs SET
                 status = CASE WHEN planned THEN 'Active' ELSE 'Queued' END,
                 attempts = 0, error = NULL, public_error = NULL, completed_at = NULL,
                 expires_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND status = 'Failed' AND deleted_at IS NULL
               AND files_purged_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
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
            "UPDATE export_jobs SET status = 'Cancelled', files_purged_at = now(), completed_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND status = 'CancellationRequested'",
            &[&id, &owner],
        )
        .await?;
    Ok(n == 1)
}

/// Finished jobs whose files must go: deleted by the client or past their expiry.
pub async fn select_jobs_to_purge(pool: &Pool, limit: i64) -> Result<Vec<Uuid>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id FROM export_jobs
             WHERE files_purged_at IS NULL AND status IN ('Complete', 'Failed')
               AND (deleted_at IS NOT NULL OR expires_at < now())
             ORDER BY updated_at LIMIT $1",
            &[&limit],
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

/// Records a status poll of a running job. Returns false when the previous poll was less than
/// `min_interval` ago (the client is polling too often). Never touches the job's own row, so a
/// poll can never make an exporter's claim skip the job.
pub async fn record_poll(pool: &Pool, id: Uuid, min_interval: Duration) -> Result<bool, DbError> {
    let client = pool.get().await?;
    record_poll_with(&client, id, min_interval).await
}

/// [`record_poll`] on a given connection or transaction.
pub async fn record_poll_with(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    min_interval: Duration,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "INSERT INTO export_job_polls AS p (job_id, last_polled_at) VALUES ($1, now())
             ON CONFLICT (job_id) DO UPDATE SET last_polled_at = now()
             WHERE p.last_polled_at <= now() - make_interval(secs => $2)",
            &[&id, &min_interval.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// How far a running job is, for X-Progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobProgress {
    /// Work items (a resource type, or a key range of one) done of all.
    Items { done: i64, all: i64 },
    /// organizeOutputBy=Patient: patients whose blocks are written, of all.
    Patients { done: i64, all: i64 },
}

/// Work progress for X-Progress.
pub async fn select_progress(pool: &Pool, id: Uuid) -> Result<JobProgress, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE done), count(*),
                    max(cursor_id) FILTER (WHERE resource_type = $2)
             FROM export_work_items WHERE job_id = $1",
            &[&id, &crate::export::engine::BLOCKS_ITEM],
        )
        .await?;
    let (done, all, blocks_cursor): (i64, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let Some(cursor) = blocks_cursor else {
        return Ok(JobProgress::Items { done, all });
    };
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE patient_id <= $2), count(*)
             FROM export_job_patients WHERE job_id = $1",
            &[&id, &cursor],
        )
        .await?;
    Ok(JobProgress::Patients {
        done: if done == all { row.get(1) } else { row.get(0) },
        all: row.get(1),
    })
}
