//! An item's checkpoint: its files and cursor recorded together, and the job completed by the
//! last one.

use std::time::Duration;

use uuid::Uuid;

use super::WorkItem;
use crate::db::reads::ReadRange;
use crate::db::{DbError, Pool};
use crate::export::job::Transition;
use crate::export::manifest::ExportFile;

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
    ranges: &[ReadRange],
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
    crate::db::files::insert_files(&tx, item.job_id, files).await?;
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
    ranges: &[ReadRange],
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
