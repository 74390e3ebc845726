//! Export reads: the selections of a work item, its resources as one streamed statement per
//! phase (`range`), deletions, dangling references and the blocks of organizeOutputBy=Patient
//! (`blocks`).
//!
//! Resource text is copied as stored (no JSON parsing).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DbError, Pool};

mod blocks;
mod range;
pub use blocks::*;
pub use range::*;

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
