//! organizeOutputBy=Patient: the job's patients in batches, and one statement that returns each
//! batch's blocks (every patient's compartment, referenced AdditionalResources and Provenance).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{DbError, Pool};

/// The next `limit` patients of the job after `cursor`, in id order (organizeOutputBy=Patient).
pub async fn select_patient_batch(
    pool: &Pool,
    job_id: Uuid,
    cursor: &str,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT patient_id FROM export_job_patients
             WHERE job_id = $1 AND patient_id > $2 ORDER BY patient_id LIMIT $3",
            &[&job_id, &cursor, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What the blocks of a batch of patients hold (organizeOutputBy=Patient): each patient's
/// compartment resources, the AdditionalResources they reference and the Provenance that
/// targets them, as they were at the transaction time and changed after `since`.
#[derive(Debug, Clone)]
pub struct BlockQuery<'a> {
    pub patients: &'a [String],
    /// Compartment members of these types.
    pub compartment_types: &'a [String],
    /// Compartment members of these types bring the resources they reference (`_type` filters
    /// the output, not this traversal).
    pub referencing_types: &'a [String],
    /// Resources of these types referenced by a compartment member of the block.
    pub referenced_types: &'a [String],
    /// Provenance whose target is a compartment member of the block (of these types);
    /// `latest_provenance`: only the newest of each target.
    pub provenance_target_types: &'a [String],
    pub latest_provenance: bool,
    pub transaction_time: DateTime<Utc>,
    pub since: Option<DateTime<Utc>>,
}

/// One resource of a block.
pub struct BlockRow {
    pub patient_id: String,
    pub resource_type: String,
    pub resource: String,
}

const BLOCKS_SQL: &str = "
WITH cand AS (
    SELECT c.patient_id, c.resource_type, c.resource_id AS id
    FROM compartment c
    WHERE c.patient_id = ANY($1) AND c.resource_type = ANY($2)
  UNION
    SELECT c.patient_id, t.target_type, t.target_id
    FROM compartment c
    JOIN resource_refs f ON f.source_type = c.resource_type AND f.source_id = c.resource_id
    CROSS JOIN LATERAL unnest(f.target_types, f.target_ids) AS t(target_type, target_id)
    JOIN resources s ON s.resource_type = f.source_type AND s.id = f.source_id
    WHERE c.patient_id = ANY($1) AND c.resource_type = ANY($8) AND t.target_type = ANY($3)
      AND NOT s.deleted AND s.last_updated <= $4
      AND ($5::timestamptz IS NULL OR s.last_updated > $5)
  UNION
    SELECT c.patient_id, 'Provenance', pt.provenance_id
    FROM compartment c
    JOIN provenance_targets pt ON pt.target_type = c.resource_type AND pt.target_id = c.resource_id
    JOIN resources t ON t.resource_type = c.resource_type AND t.id = c.resource_id
    WHERE c.patient_id = ANY($1) AND c.resource_type = ANY($6)
      AND NOT t.deleted AND t.last_updated <= $4
      AND ($5::timestamptz IS NULL OR t.last_updated > $5)
      AND (NOT $7 OR NOT EXISTS (
          SELECT 1 FROM provenance_targets p2
          WHERE p2.target_type = pt.target_type AND p2.target_id = pt.target_id
            AND (p2.recorded, p2.provenance_id) > (pt.recorded, pt.provenance_id)))
)
SELECT cand.patient_id, cand.resource_type, v.resource
FROM cand
JOIN resources cur ON cur.resource_type = cand.resource_type AND cur.id = cand.id
CROSS JOIN LATERAL (
    SELECT cur.resource, cur.deleted, cur.last_updated WHERE cur.last_updated <= $4
    UNION ALL
    (SELECT h.resource, h.deleted, h.last_updated FROM resource_history h
     WHERE cur.last_updated > $4 AND h.resource_type = cand.resource_type AND h.id = cand.id
       AND h.last_updated <= $4
     ORDER BY h.version_id DESC LIMIT 1)
) v
WHERE NOT v.deleted AND ($5::timestamptz IS NULL OR v.last_updated > $5)
ORDER BY cand.patient_id, (cand.resource_type = 'Patient' AND cand.id = cand.patient_id) DESC,
         cand.resource_type, cand.id";

/// Streams the blocks of a batch, ordered by patient, the patient's own Patient resource first,
/// then by type and id. Rows arrive as Postgres sends them: a batch is never held in memory.
/// `client` stays busy until the stream is drained or dropped.
pub async fn stream_blocks(
    client: &deadpool_postgres::Client,
    q: &BlockQuery<'_>,
) -> Result<tokio_postgres::RowStream, DbError> {
    let stmt = client.prepare_cached(BLOCKS_SQL).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &q.patients,
        &q.compartment_types,
        &q.referenced_types,
        &q.transaction_time,
        &q.since,
        &q.provenance_target_types,
        &q.latest_provenance,
        &q.referencing_types,
    ];
    Ok(client.query_raw(&stmt, params).await?)
}

pub fn block_row(row: &tokio_postgres::Row) -> BlockRow {
    BlockRow {
        patient_id: row.get(0),
        resource_type: row.get(1),
        resource: row.get(2),
    }
}
