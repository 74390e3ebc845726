//! `export_jobs`: the job table is the source of truth and the queue. A job's kick-off, reads
//! and progress are here; what happens to it afterwards is in `lifecycle`.

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, Pool};

mod lifecycle;
use crate::export::{ExportLevel, ExportParams, Job, JobStatus};
pub use lifecycle::*;

const JOB_COLUMNS: &str = "id, level, group_id, params, request_url, client_id, transaction_time, \
     status, planned, attempts, error, public_error, created_at, completed_at, expires_at, deleted_at, \
     scan_patients";

fn job_from_row(row: &Row) -> Result<Job, DbError> {
    let level: String = row.get("level");
    let status: String = row.get("status");
    let params: serde_json::Value = row.get("params");
    Ok(Job {
        id: row.get("id"),
        level: ExportLevel::parse(&level).ok_or(DbError::UnknownValue {
            column: "level",
            value: level,
        })?,
        group_id: row.get("group_id"),
        params: serde_json::from_value(params)?,
        request_url: row.get("request_url"),
        client_id: row.get("client_id"),
        transaction_time: row.get("transaction_time"),
        status: JobStatus::parse(&status).ok_or(DbError::UnknownValue {
            column: "status",
            value: status,
        })?,
        planned: row.get("planned"),
        attempts: row.get("attempts"),
        error: row.get("error"),
        public_error: row.get("public_error"),
        created_at: row.get("created_at"),
        completed_at: row.get("completed_at"),
        expires_at: row.get("expires_at"),
        deleted_at: row.get("deleted_at"),
        scan_patients: row.get("scan_patients"),
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

/// The member of a job's stored `params` that names the storage its files are written to (no
/// FHIR parameter has this name; ExportParams ignores it when the job is read).
pub const STORAGE_PARAM: &str = "storage";

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
    insert_job_in(pool, job, limits, None).await
}

/// [`insert_job`] for the storage named `storage` ([`crate::config::StoragePath::identity`]):
/// only an exporter writing there takes the job's work. None: any exporter.
pub async fn insert_job_in(
    pool: &Pool,
    job: NewJob<'_>,
    limits: JobLimits,
    storage: Option<&str>,
) -> Result<Result<Job, LimitReached>, DbError> {
    let mut client = pool.get().await?;
    let mut params = serde_json::to_value(job.params)?;
    if let (Some(storage), Some(members)) = (storage, params.as_object_mut()) {
        members.insert(STORAGE_PARAM.into(), storage.into());
    }
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
    // Read before every work item: prepared once per connection (a parse is a round trip).
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM export_jobs WHERE id = $1"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    row.as_ref().map(job_from_row).transpose()
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
            &[&id, &super::work_items::BLOCKS_ITEM],
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
