//! Export reads: a work item's resources as one streamed statement per phase, deletions,
//! dangling references and the blocks of organizeOutputBy=Patient.
//!
//! Resource text is copied as stored (no JSON parsing).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::work_items::Phase;
use super::{DbError, Pool};

mod blocks;
pub use blocks::*;

/// Which resources of one type a work item exports.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub job_id: Uuid,
    pub resource_type: &'a str,
    /// The last id of the work item's key range (None: to the end of the type).
    pub upto: Option<&'a str>,
    pub transaction_time: DateTime<Utc>,
    pub since: Option<DateTime<Utc>>,
    /// None: every resource of the type (system level). Some: Patient/Group level.
    pub scope: Option<PatientScope<'a>>,
    /// Provenance only: select by `Provenance.target` (includeAssociatedData).
    pub associated: Option<Associated<'a>>,
}

/// Provenance associated with the export's resources: those whose target is a current resource
/// of `target_types` in the selection's scope and `_since`.
#[derive(Debug, Clone)]
pub struct Associated<'a> {
    pub target_types: &'a [String],
    /// Only the latest Provenance (by `recorded`) of each target.
    pub latest: bool,
    /// Also what the scope alone selects (Patient/Group level: the compartment's Provenance).
    pub with_scope: bool,
}

#[derive(Debug, Clone)]
pub struct PatientScope<'a> {
    /// Members of the job's patients' compartments.
    pub compartment: bool,
    /// Resources referenced by exported compartment resources of these types
    /// (AdditionalResources, read from the references written at planning: `export_job_refs`);
    /// empty for none.
    pub referenced_from: &'a [String],
    /// Members found by scanning the type and testing each row's `patients` against a hash of
    /// the job's this many patients (None: through their `compartment` rows).
    pub scan_patients: Option<i64>,
}

pub struct Row {
    pub id: String,
    pub resource: String,
}

impl Row {
    /// From a statement whose first two columns are the id and the resource text.
    fn from_row(r: &tokio_postgres::Row) -> Row {
        Row {
            id: r.get(0),
            resource: r.get(1),
        }
    }
}

/// SQL condition on alias `r` for the selection (naming `:type`, `:tx_time`, `:since`, `:job`,
/// `:sources`).
fn selection_condition(sel: &Selection<'_>) -> String {
    let scope = scope_condition(&sel.scope);
    let Some(a) = &sel.associated else {
        return scope;
    };
    let in_patients = if sel.scope.is_some() {
        "AND EXISTS (SELECT 1 FROM export_job_patients jp
                     WHERE jp.job_id = :job AND jp.patient_id = ANY(t.patients))"
    } else {
        ""
    };
    let latest = if a.latest {
        "AND NOT EXISTS (SELECT 1 FROM provenance_targets p2
                         WHERE p2.target_type = pt.target_type AND p2.target_id = pt.target_id
                           AND (p2.recorded, p2.provenance_id) > (pt.recorded, pt.provenance_id))"
    } else {
        ""
    };
    let associated = format!(
        "EXISTS (SELECT 1 FROM provenance_targets pt
                 JOIN resources t ON t.resource_type = pt.target_type AND t.id = pt.target_id
                 WHERE pt.provenance_id = r.id AND pt.target_type = ANY(:sources)
                   AND NOT t.deleted AND t.last_updated <= :tx_time
                   AND (:since::timestamptz IS NULL OR t.last_updated > :since)
                   {in_patients} {latest})"
    );
    if a.with_scope {
        format!("({scope} OR {associated})")
    } else {
        associated
    }
}

fn scope_condition(scope: &Option<PatientScope<'_>>) -> String {
    let Some(scope) = scope else {
        return "true".into();
    };
    let mut parts: Vec<String> = Vec::new();
    if scope.compartment && scope.scan_patients.is_some() {
        parts.push(in_job_patients("r.patients", ":job"));
    } else if scope.compartment {
        parts.push(
            "EXISTS (SELECT 1 FROM compartment c
                     JOIN export_job_patients jp ON jp.job_id = :job AND jp.patient_id = c.patient_id
                     WHERE c.resource_type = :type AND c.resource_id = r.id
                       -- redundant with the range of r.id, but bounds the members read to the
                       -- item's range (a hash of a whole type's members per item, otherwise)
                       AND c.resource_id > :cursor
                       AND (:upto::text IS NULL OR c.resource_id <= :upto))"
                .into(),
        );
    }
    if !scope.referenced_from.is_empty() {
        parts.push(
            "r.id IN (SELECT jr.target_id FROM export_job_refs jr
                      WHERE jr.job_id = :job AND jr.target_type = :type)"
                .into(),
        );
    }
    if parts.is_empty() {
        "false".into()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

/// SQL: whether the compartment patients `patients` (a `text[]` column) include one of job
/// `job`'s patients. The first is looked up in a hash of the job's patients (built once per
/// statement: a hashed SubPlan, which the read sizes `work_mem` for: [`hash_work_mem_kb`]); the rare resource in more
/// than one compartment has the others probed in the job's key.
fn in_job_patients(patients: &str, job: &str) -> String {
    format!(
        "({patients}[1] IN (SELECT jp.patient_id FROM export_job_patients jp WHERE jp.job_id = {job})
          OR (cardinality({patients}) > 1
              AND EXISTS (SELECT 1 FROM unnest({patients}) AS p(id)
                          JOIN export_job_patients jp ON jp.job_id = {job} AND jp.patient_id = p.id)))"
    )
}

/// `work_mem` (kB) for a statement that hashes `scan_patients` job patients
/// ([`in_job_patients`]) and otherwise needs `base`: Postgres hashes the SubPlan only when its
/// estimated size fits `work_mem × hash_mem_multiplier` (else it would scan the job's patients
/// once per row). Sized at 128 bytes per patient (about twice what a hashed text key takes),
/// so the multiplier (2 by default) is margin.
fn hash_work_mem_kb(scan_patients: Option<i64>, base: i64) -> i64 {
    // At most what Postgres accepts (2^31 - 1 kB).
    scan_patients.map_or(base, |n| {
        base.max(n.saturating_mul(128) / 1024).min(i32::MAX as i64)
    })
}

/// The values a selection statement may name: `:type`, `:cursor`, `:tx_time` (the transaction
/// time), `:since`, `:job`, `:sources` (source types of referenced resources, or Provenance
/// target types), `:upto` (the last id of the item's range; NULL: to the end), `:limit`.
fn selection_values<'a>(
    sel: &'a Selection<'a>,
    cursor: &'a &'a str,
    sources: &'a &'a [String],
    limit: &'a i64,
) -> [(&'static str, super::named::Value<'a>); 8] {
    [
        ("type", &sel.resource_type),
        ("cursor", cursor),
        ("tx_time", &sel.transaction_time),
        ("since", &sel.since),
        ("job", &sel.job_id),
        ("sources", sources),
        ("upto", &sel.upto),
        ("limit", limit),
    ]
}

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
    let scope = selection_condition(sel);
    let source = phase_source(phase);
    // Phase 0 in table order: in id order through the primary key, each row of a heap in load
    // order would be a random page access.
    let order = if phase == Phase::Current {
        ""
    } else {
        "ORDER BY r.id"
    };
    let sql = format!(
        "SELECT r.id, r.resource FROM ({source}) r
         WHERE NOT r.deleted AND (:since::timestamptz IS NULL OR r.last_updated > :since)
           AND {scope}
         {order}"
    );
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
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
    tx.batch_execute(&format!(
        "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off;
         SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL work_mem = '{work_mem_kb}kB';
         SET LOCAL enable_indexscan = {index_scan}; SET LOCAL enable_hashagg = {hash_agg}"
    ))
    .await?;
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
    let (sql, values) =
        super::named::number(&sql, &selection_values(sel, &cursor, &sources, &no_limit))?;
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = Box::pin(tx.query_raw(&stmt, values).await?);
    Ok(RangeRead {
        tx,
        rows,
        exhausted: false,
        snapshot,
    })
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

/// The `:sources` of a selection statement: source types of referenced resources, or for
/// Provenance the target types.
fn source_types<'a>(sel: &Selection<'a>) -> &'a [String] {
    let mut sources: &[String] = sel.scope.as_ref().map_or(&[], |s| s.referenced_from);
    if let Some(a) = &sel.associated {
        // The two lists never meet: AdditionalResources are never Provenance at system level,
        // and at Patient level both are the exported compartment types.
        if sources.is_empty() {
            sources = a.target_types;
        }
    }
    sources
}

/// Resources deleted after `since` and up to the transaction time, in the selection's scope,
/// after `cursor` (for `deleted[]`): the id and the content the resource had when it was
/// deleted (a tombstone keeps it), so that `_typeFilter` can decide whether it is listed.
pub async fn select_deleted(
    pool: &Pool,
    sel: &Selection<'_>,
    cursor: &str,
    max_rows: i64,
) -> Result<Vec<Row>, DbError> {
    let scope = selection_condition(sel);
    let sql = format!(
        "SELECT r.id, r.resource FROM resources r
         WHERE r.resource_type = :type AND r.id > :cursor AND r.deleted AND r.last_updated <= :tx_time
           AND r.last_updated > :since AND {scope}
           AND (:upto::text IS NULL OR r.id <= :upto)
         ORDER BY r.id LIMIT :limit"
    );
    let sources = source_types(sel);
    let (sql, values) =
        super::named::number(&sql, &selection_values(sel, &cursor, &sources, &max_rows))?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if let Some(n) = sel.scope.as_ref().and_then(|s| s.scan_patients) {
        // As in a read: the job's patients hashed, in memory (see `hash_work_mem_kb`).
        tx.batch_execute(&format!(
            "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '{}kB'",
            hash_work_mem_kb(Some(n), 4 * 1024)
        ))
        .await?;
    }
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &values).await?;
    tx.commit().await?;
    Ok(rows.iter().map(Row::from_row).collect())
}

/// References from the job's exported compartment resources (of `source_types`) to
/// `target_type` resources that do not exist: (source type, source id, target id). Planning
/// wrote every source of a reference to a resource missing then (`planning::mark_planned`).
pub async fn select_dangling_refs(
    pool: &Pool,
    sel: &Selection<'_>,
    source_types: &[String],
    limit: i64,
) -> Result<Vec<(String, String, String)>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT DISTINCT jr.source_type, jr.source_id, jr.target_id FROM export_job_refs jr
             WHERE jr.job_id = $1 AND jr.target_type = $2 AND jr.source_type = ANY($3)
               AND NOT EXISTS (SELECT 1 FROM resources t WHERE t.resource_type = $2
                               AND t.id = jr.target_id AND NOT t.deleted)
             ORDER BY 1, 2, 3 LIMIT $4",
            &[&sel.job_id, &sel.resource_type, &source_types, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scanning_read_holds_its_patients_hash_in_work_mem() {
        assert_eq!(hash_work_mem_kb(None, 32 * 1024), 32 * 1024);
        // 1,000 patients fit the base setting; 10 million need 1.25 GB (128 bytes each).
        assert_eq!(hash_work_mem_kb(Some(1_000), 32 * 1024), 32 * 1024);
        assert_eq!(hash_work_mem_kb(Some(10_000_000), 32 * 1024), 1_250_000);
        assert_eq!(hash_work_mem_kb(Some(i64::MAX), 32 * 1024), i32::MAX as i64);
    }

    #[test]
    fn the_scan_test_names_the_column_and_the_job_it_is_given() {
        let sql = in_job_patients("r.patients", ":job");
        assert!(sql.starts_with("(r.patients[1] IN (SELECT jp.patient_id FROM export_job_patients jp WHERE jp.job_id = :job)"));
        assert!(sql.contains("unnest(r.patients)"));
        assert!(!sql.contains("{patients}") && !sql.contains("{job}"));
    }
}
