//! `export_work_items`: one per resource type of a job, with a durable cursor.

use uuid::Uuid;

use super::{DbError, Pool};
use crate::export::manifest::{ExportFile, FileKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub job_id: Uuid,
    pub resource_type: String,
    /// 0: current versions; 1: prior versions of resources changed after the transaction time.
    pub phase: i16,
    /// The last id durably written (exclusive lower bound for the next read).
    pub cursor_id: String,
    pub next_file_seq: i32,
    pub done: bool,
}

pub async fn select_work_items(pool: &Pool, job_id: Uuid) -> Result<Vec<WorkItem>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT resource_type, phase, cursor_id, next_file_seq, done
             FROM export_work_items WHERE job_id = $1 ORDER BY resource_type",
            &[&job_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WorkItem {
            job_id,
            resource_type: r.get(0),
            phase: r.get(1),
            cursor_id: r.get(2),
            next_file_seq: r.get(3),
            done: r.get(4),
        })
        .collect())
}

/// Records a finished file and advances the item's cursor in one transaction, so a crash
/// either keeps both or neither (the file is then rewritten under the same name).
pub async fn checkpoint(pool: &Pool, item: &WorkItem, files: &[ExportFile]) -> Result<(), DbError> {
    checkpoint_with(pool, item, files, &[], false).await
}

/// A checkpoint that also records the snapshots phase-0 pages were read under (see
/// `crate::db::files::ReadRange`), durable with the file that holds their rows.
pub async fn checkpoint_read(
    pool: &Pool,
    item: &WorkItem,
    files: &[ExportFile],
    ranges: &[crate::db::files::ReadRange],
) -> Result<(), DbError> {
    checkpoint_with(pool, item, files, ranges, false).await
}

/// The last checkpoint of a job whose one item did all the work (organizeOutputBy=Patient):
/// its files, its state and every other work item marked done, in one transaction, so a crash
/// can never leave the job looking finished with files missing from the manifest.
pub async fn checkpoint_last(
    pool: &Pool,
    item: &WorkItem,
    files: &[ExportFile],
) -> Result<(), DbError> {
    checkpoint_with(pool, item, files, &[], true).await
}

async fn checkpoint_with(
    pool: &Pool,
    item: &WorkItem,
    files: &[ExportFile],
    ranges: &[crate::db::files::ReadRange],
    all_done: bool,
) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    insert_files(&tx, item.job_id, files).await?;
    if !ranges.is_empty() {
        let after: Vec<&str> = ranges.iter().map(|r| r.after_id.as_str()).collect();
        let upto: Vec<Option<&str>> = ranges.iter().map(|r| r.upto_id.as_deref()).collect();
        let snaps: Vec<&str> = ranges.iter().map(|r| r.snapshot.as_str()).collect();
        tx.execute(
            "INSERT INTO export_read_ranges (job_id, resource_type, after_id, upto_id, snap)
             SELECT $1, $2, a, u, s::pg_snapshot
             FROM unnest($3::text[], $4::text[], $5::text[]) AS x(a, u, s)",
            &[&item.job_id, &item.resource_type, &after, &upto, &snaps],
        )
        .await?;
    }
    // Progress: attempts count failures without progress, so a long export on a flaky network
    // does not fail after a few blips that each cost nothing.
    if !files.is_empty() {
        tx.execute(
            "UPDATE export_jobs SET attempts = 0 WHERE id = $1 AND attempts > 0",
            &[&item.job_id],
        )
        .await?;
    }
    if all_done {
        tx.execute(
            "UPDATE export_work_items SET done = true, updated_at = now() WHERE job_id = $1",
            &[&item.job_id],
        )
        .await?;
    }
    tx.execute(
        "UPDATE export_work_items SET phase = $3, cursor_id = $4, next_file_seq = $5, done = $6,
             updated_at = now()
         WHERE job_id = $1 AND resource_type = $2",
        &[
            &item.job_id,
            &item.resource_type,
            &item.phase,
            &item.cursor_id,
            &item.next_file_seq,
            &item.done,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records finished files (idempotent: a rewritten file replaces its row).
pub async fn insert_files(
    client: &impl deadpool_postgres::GenericClient,
    job_id: Uuid,
    files: &[ExportFile],
) -> Result<(), DbError> {
    for f in files {
        client
            .execute(
                "INSERT INTO export_files (job_id, file_name, kind, resource_type, object_key,
                     resource_count, byte_count, gzip_object_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (job_id, file_name) DO UPDATE SET resource_count = excluded.resource_count,
                     byte_count = excluded.byte_count, object_key = excluded.object_key,
                     gzip_object_key = excluded.gzip_object_key",
                &[
                    &job_id,
                    &f.file_name,
                    &f.kind.as_str(),
                    &f.resource_type,
                    &f.object_key,
                    &f.resource_count,
                    &f.byte_count,
                    &f.gzip_object_key,
                ],
            )
            .await?;
    }
    Ok(())
}

const FILE_COLUMNS: &str =
    "file_name, kind, resource_type, object_key, resource_count, byte_count, gzip_object_key";

fn file_from_row(r: &tokio_postgres::Row) -> Result<ExportFile, DbError> {
    let kind: String = r.get(1);
    Ok(ExportFile {
        file_name: r.get(0),
        kind: FileKind::parse(&kind).ok_or_else(|| DbError::Row(format!("kind {kind}")))?,
        resource_type: r.get(2),
        object_key: r.get(3),
        resource_count: r.get(4),
        byte_count: r.get(5),
        gzip_object_key: r.get(6),
    })
}

pub async fn select_files(pool: &Pool, job_id: Uuid) -> Result<Vec<ExportFile>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {FILE_COLUMNS} FROM export_files WHERE job_id = $1 ORDER BY file_name"
            ),
            &[&job_id],
        )
        .await?;
    rows.iter().map(file_from_row).collect()
}

/// One file of a job, by name (a download looks up one row, not the job's whole file list).
pub async fn get_file(
    pool: &Pool,
    job_id: Uuid,
    file_name: &str,
) -> Result<Option<ExportFile>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {FILE_COLUMNS} FROM export_files WHERE job_id = $1 AND file_name = $2"
            ),
            &[&job_id, &file_name],
        )
        .await?;
    row.as_ref().map(file_from_row).transpose()
}
