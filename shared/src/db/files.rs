//! `export_files`: a job's finished files, written by the checkpoint of the work item that wrote
//! them (`super::work_items::checkpoint`) and read for the manifest and downloads.

use uuid::Uuid;

use super::{DbError, Pool};
use crate::export::manifest::{ExportFile, FileKind};

/// Records finished files (idempotent: a rewritten file replaces its row).
pub async fn insert_files(
    client: &impl deadpool_postgres::GenericClient,
    job_id: Uuid,
    files: &[ExportFile],
) -> Result<(), DbError> {
    if files.is_empty() {
        return Ok(());
    }
    // Prepared once per connection (every checkpoint records files).
    let stmt = client
        .prepare_cached(
            "INSERT INTO export_files (job_id, file_name, kind, resource_type, object_key,
                 resource_count, byte_count, gzip_object_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (job_id, file_name) DO UPDATE SET resource_count = excluded.resource_count,
                 byte_count = excluded.byte_count, object_key = excluded.object_key,
                 gzip_object_key = excluded.gzip_object_key",
        )
        .await?;
    for f in files {
        client
            .execute(
                &stmt,
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
        kind: FileKind::parse(&kind).ok_or(DbError::UnknownValue {
            column: "kind",
            value: kind,
        })?,
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
