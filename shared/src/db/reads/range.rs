//! A work item's range read in one phase: one streamed statement under a recorded snapshot.

use super::{hash_work_mem_kb, selection_condition, selection_values, source_types, Selection};
use crate::db::work_items::Phase;
use crate::db::{named, DbError, Pool};

/// Ids in `(after_id, upto_id]` (to the end when None) were read in phase 0 under `snapshot`
/// (a `pg_snapshot` in its text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRange {
    pub after_id: String,
    pub upto_id: Option<String>,
    pub snapshot: String,
}

/// The rows of a phase (0: current versions; 1: the version current at the transaction time of
/// resources changed since, unless phase 0 already exported it) after the cursor, within the
/// item's range: (id, resource, deleted, last_updated, patients), unordered. `patients` is the
/// current version's (in phase 1 too), as the `compartment` rows are.
fn phase_source(phase: Phase) -> &'static str {
    if phase == Phase::Current {
        "SELECT r.id, r.resource, r.deleted, r.last_updated, r.patients FROM resources r
         WHERE r.resource_type = :type AND r.id > :cursor AND (:upto::text IS NULL OR r.id <= :upto)
           AND r.last_updated <= :tx_time"
    } else {
        "SELECT h1.id, h1.resource, h1.deleted, h1.last_updated, h1.patients FROM (
             SELECT DISTINCT ON (h.id) h.id, h.resource, h.deleted, h.last_updated, h.version_id,
                    cur.version_id AS cur_version, cur.written_xid AS cur_xid, cur.patients
             FROM resource_history h
             JOIN resources cur ON cur.resource_type = h.resource_type AND cur.id = h.id
             WHERE h.resource_type = :type AND h.id > :cursor AND (:upto::text IS NULL OR h.id <= :upto)
               AND h.last_updated <= :tx_time AND cur.last_updated > :tx_time
             ORDER BY h.id, h.version_id DESC) h1
         WHERE NOT EXISTS (
             SELECT 1 FROM export_read_ranges p
             WHERE p.job_id = :job AND p.resource_type = :type
               AND h1.id > p.after_id AND (p.upto_id IS NULL OR h1.id <= p.upto_id)
               AND NOT coalesce(pg_visible_in_snapshot(
                   CASE WHEN h1.cur_version = h1.version_id + 1 THEN h1.cur_xid
                        ELSE (SELECT h2.written_xid FROM resource_history h2
                              WHERE h2.resource_type = :type AND h2.id = h1.id
                                AND h2.version_id = h1.version_id + 1) END,
                   p.snap), true))"
    }
}

/// A streamed read of a work item's range in one phase: one statement in a read-only
/// REPEATABLE READ transaction (so its snapshot is the one recorded), whose rows Postgres sends
/// as fast as they are taken (TCP and the client's buffers hold them back when the exporter
/// falls behind). Rows come as stored text: in table order in phase 0, in id order in phase 1.
///
/// Phase 1 is exact under concurrent writes: a resource changed after the transaction time was
/// exported by phase 0 exactly when the write that changed it was not visible to the phase-0
/// read that covered its id (that read then still saw the transaction-time version). The reads'
/// snapshots are in `export_read_ranges` (recorded with the files that hold their rows), each
/// version's writer in `written_xid`. MVCC decides, not clocks.
pub struct RangeRead<'c> {
    tx: deadpool_postgres::Transaction<'c>,
    rows: std::pin::Pin<Box<tokio_postgres::RowStream>>,
    /// The statement has sent its last row (its stream must not be polled again).
    exhausted: bool,
    /// Phase 0: the snapshot every row of this read was read under (`pg_snapshot` text).
    pub snapshot: Option<String>,
}

impl RangeRead<'_> {
    /// The next rows: at most `max_rows`, and no more once `max_bytes` of resources are taken
    /// (none: the range is exhausted).
    pub async fn fetch(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StreamedRow>, DbError> {
        use futures::TryStreamExt;
        let mut out = Vec::new();
        let mut bytes = 0;
        while !self.exhausted && out.len() < max_rows && bytes < max_bytes {
            match self.rows.try_next().await? {
                Some(r) => {
                    let row = StreamedRow::new(r)?;
                    bytes += row.len;
                    out.push(row);
                }
                None => self.exhausted = true,
            }
        }
        Ok(out)
    }

    /// Ends the read (its transaction only read). Rows not taken yet are skipped on the way.
    pub async fn close(self) -> Result<(), DbError> {
        drop(self.rows);
        self.tx.rollback().await?;
        Ok(())
    }
}

/// A row of a [`RangeRead`], kept as received (its text is not copied out of it).
pub struct StreamedRow {
    row: tokio_postgres::Row,
    /// Bytes of the resource text.
    pub len: usize,
}

/// A text column's bytes as received, without the UTF-8 check `&str` makes: Postgres sends text
/// in the client encoding (UTF8 for every connection of tokio-postgres) and has validated it
/// when it was stored. Checking every byte again would cost the exporter more CPU than writing
/// it.
struct TextBytes<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for TextBytes<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(TextBytes(raw))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

impl StreamedRow {
    fn new(row: tokio_postgres::Row) -> Result<StreamedRow, DbError> {
        let len = row.try_get::<_, TextBytes>(1)?.0.len();
        Ok(StreamedRow { row, len })
    }

    /// The resource's bytes as stored (UTF-8), for copying without looking at them.
    pub fn resource_bytes(&self) -> &[u8] {
        self.row.get::<_, TextBytes>(1).0
    }

    pub fn id(&self) -> &str {
        self.row.get(0)
    }

    /// The resource as stored.
    pub fn resource(&self) -> &str {
        self.row.get(1)
    }
}

/// Opens the streamed read of `sel`'s rows after `cursor` in `phase` (see [`RangeRead`]).
/// Planned for these parameter values every time (`plan_cache_mode = force_custom_plan`): a
/// generic plan of the Patient-scope condition walked the whole type and tested each row;
/// without JIT and without parallel workers.
pub async fn read_range<'c>(
    client: &'c mut deadpool_postgres::Client,
    sel: &Selection<'_>,
    phase: Phase,
    cursor: &str,
) -> Result<RangeRead<'c>, DbError> {
    let sql = range_sql(sel, phase);
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    tx.batch_execute(&read_settings(sel, phase)).await?;
    let snapshot = if phase == Phase::Current {
        Some(
            tx.query_one(
                &tx.prepare_cached("SELECT pg_current_snapshot()::text")
                    .await?,
                &[],
            )
            .await?
            .get(0),
        )
    } else {
        None
    };
    let sources = source_types(sel);
    let no_limit = 0i64;
    let (sql, values) = named::number(&sql, &selection_values(sel, &cursor, &sources, &no_limit))?;
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = Box::pin(tx.query_raw(&stmt, values).await?);
    Ok(RangeRead {
        tx,
        rows,
        exhausted: false,
        snapshot,
    })
}

/// The statement of a range read: the phase's rows in the selection, not deleted, changed
/// after `_since`.
fn range_sql(sel: &Selection<'_>, phase: Phase) -> String {
    let scope = selection_condition(sel);
    let source = phase_source(phase);
    // Phase 0 in table order: in id order through the primary key, each row of a heap in load
    // order would be a random page access.
    let order = if phase == Phase::Current {
        ""
    } else {
        "ORDER BY r.id"
    };
    format!(
        "SELECT r.id, r.resource FROM ({source}) r
         WHERE NOT r.deleted AND (:since::timestamptz IS NULL OR r.last_updated > :since)
           AND {scope}
         {order}"
    )
}

/// The planner settings of a range read's transaction.
fn read_settings(sel: &Selection<'_>, phase: Phase) -> String {
    // No JIT: it would compile every item's statement afresh (one statement per item phase). No parallel workers: the exporters are the parallelism, and a parallel plan
    // ordered the rows of a Patient-level read with a Gather Merge over sorts spilled to disk.
    // work_mem: a Patient-level range is a hash semi-join of the range with its compartment
    // members; with the default 4 MB the hash of a Patient-level read's members spills to disk.
    // A system-level phase 0 is a bitmap or sequential scan, never a walk of the key in id
    // order (stale statistics could make it look cheaper); elsewhere the server's setting.
    // So is a scanned compartment's (unless the type's AdditionalResources are read too: a
    // few ids of `export_job_refs`, found through the key).
    let scans = match &sel.scope {
        None => true,
        Some(s) => s.compartment && s.scan_patients.is_some() && s.referenced_from.is_empty(),
    };
    let index_scan = if phase == Phase::Current && scans && sel.associated.is_none() {
        "off"
    } else {
        "DEFAULT"
    };
    // A Patient-scope read is a semi-join of the range with its compartment members: hashed
    // as they are (a hash semi-join), not first made unique by a hash aggregate, which the
    // planner prefers and which costs more than the hash itself.
    let hash_agg = if sel.scope.is_some() {
        "off"
    } else {
        "DEFAULT"
    };
    // A scanned compartment hashes the job's patients: `work_mem` holds them whatever their
    // number (else Postgres would test each row against a list of them).
    let work_mem_kb = hash_work_mem_kb(sel.scope.as_ref().and_then(|s| s.scan_patients), 32 * 1024);
    format!(
        "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off;
         SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL work_mem = '{work_mem_kb}kB';
         SET LOCAL enable_indexscan = {index_scan}; SET LOCAL enable_hashagg = {hash_agg}"
    )
}

/// Whether any resource of the selection's type in `(after, upto]` changed after the
/// transaction time (was updated, deleted or created since): the only rows phase 1 can export.
/// Asked after phase 0's read, under a later snapshot: a change it does not see was not visible
/// to phase 0 either, so phase 0 exported that resource's transaction-time version, and phase 1
/// would not. When nothing changed, phase 1 (a statement and a checkpoint) is skipped.
pub async fn range_changed_since(
    pool: &Pool,
    sel: &Selection<'_>,
    after: &str,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM resources
                            WHERE resource_type = $1 AND last_updated > $2
                              AND id > $3 AND ($4::text IS NULL OR id <= $4))",
        )
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[&sel.resource_type, &sel.transaction_time, &after, &sel.upto],
        )
        .await?;
    Ok(row.get(0))
}
