//! Planning a job, in one transaction: its patients (`export_job_patients`), the references to
//! its AdditionalResources (`export_job_refs`), its data's size and its work items
//! (`export_work_items`), then the job marked planned (`export_jobs`).

use uuid::Uuid;

use super::{DbError, Pool};

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

/// The references a job follows to its AdditionalResources, written once at planning
/// (`export_job_refs`): from its patients' compartment resources of
/// `source_types` that are current at the transaction time (and changed after `since`), to
/// resources of `target_types`.
#[derive(Debug, Clone)]
pub struct JobRefs<'a> {
    pub source_types: &'a [String],
    pub target_types: &'a [String],
    pub transaction_time: chrono::DateTime<chrono::Utc>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// How planning sizes a job's items and reads its compartments (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct PlanSettings {
    /// Target bytes of a work item (`EXPORT_ITEM_BYTES`).
    pub item_bytes: u64,
    /// Share of all Patients from which a job scans its compartment types (`EXPORT_SCAN_PERCENT`).
    pub scan_share: f64,
    /// Most patients a scanning job may have (`EXPORT_SCAN_MAX_PATIENTS`): its reads hash them
    /// in memory.
    pub scan_max_patients: i64,
}

/// Marks the job planned, in one transaction: stores its patients and its references to
/// AdditionalResources (`refs`), measures its data (sampling only when it is larger than
/// `settings.item_bytes`) and stores the work items `split` makes of it. A job with at least
/// `settings.scan_share` of all Patients reads its compartment types by scanning them
/// (`export_jobs.scan_patients`). Returns the number of open items.
pub async fn mark_planned(
    pool: &Pool,
    id: Uuid,
    resource_types: &[String],
    patients: PatientSet<'_>,
    refs: Option<JobRefs<'_>>,
    settings: PlanSettings,
    split: impl FnOnce(&DataSizes) -> Vec<crate::db::work_items::NewItem>,
) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let added = insert_job_patients(&tx, id, patients).await?;
    let fraction = match patients {
        PatientSet::None => 1.0,
        _ => patient_fraction(&tx, added).await?,
    };
    let scan_patients = scan_patients(added, fraction, settings);
    if let Some(r) = &refs {
        insert_job_refs(&tx, id, r, scan_patients.is_some()).await?;
    }
    let sizes = measure_data(&tx, resource_types, fraction, settings.item_bytes).await?;
    let items = split(&sizes);
    crate::db::work_items::insert_items(&tx, id, &items).await?;
    tx.execute(
        "UPDATE export_jobs SET planned = true, lease_owner = NULL, lease_expires_at = NULL,
             scan_patients = $2, updated_at = now()
         WHERE id = $1",
        &[&id, &scan_patients],
    )
    .await?;
    tx.commit().await?;
    Ok(items.iter().filter(|i| !i.done).count())
}

/// Stores the job's patients (`export_job_patients`, those that exist) and refreshes the
/// table's statistics; returns how many were stored.
async fn insert_job_patients(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    patients: PatientSet<'_>,
) -> Result<u64, DbError> {
    // Only Patients that exist count, so a Group member can never pull in another Group.
    const GROUP_MEMBERS: &str = "SELECT t.ti FROM resource_refs f,
             unnest(f.target_types, f.target_ids) AS t(tt, ti)
         WHERE f.source_type = 'Group' AND f.source_id = $2 AND t.tt = 'Patient'";
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
    // The reads (and the references below) join this table; planned with a stale row count
    // (autovacuum lags) they read every member of a type on every page, which makes an export
    // quadratic in its size. ANALYZE counts this transaction's own rows and samples at most
    // 30,000, so it stays cheap however many jobs there are; its statistics commit with the plan.
    if added > 0 {
        tx.batch_execute("ANALYZE export_job_patients").await?;
    }
    Ok(added)
}

/// The share of all current Patients that `added` (a Patient- or Group-level job's) are.
async fn patient_fraction(
    tx: &deadpool_postgres::Transaction<'_>,
    added: u64,
) -> Result<f64, DbError> {
    let all: i64 = tx
        .query_one(
            "SELECT count(*) FROM resources WHERE resource_type = 'Patient' AND NOT deleted",
            &[],
        )
        .await?
        .get(0);
    Ok(if all == 0 {
        0.0
    } else {
        added as f64 / all as f64
    })
}

/// Whether a job of `added` patients, `fraction` of all, scans its compartment types: then
/// its number of patients (`export_jobs.scan_patients`).
fn scan_patients(added: u64, fraction: f64, settings: PlanSettings) -> Option<i64> {
    // A job with most of the database's patients reads its compartment types by scanning them
    // (each row's `patients` tested against a hash of the job's), as the system level reads;
    // one with a few, through their `compartment` rows (index probes for just their resources:
    // a Group of 10 costs the same whatever the database's size). Above
    // `scan_max_patients` the hash of the job's patients (which cannot spill to disk) would be
    // too large: such a job joins the compartment too.
    (added > 0 && fraction >= settings.scan_share && added as i64 <= settings.scan_max_patients)
        .then_some(added as i64)
}

/// Writes the job's references to its AdditionalResources (`export_job_refs`), with the items,
/// in the same transaction: no item reads before they are there. `scanning`: the job scans
/// its compartment types (see [`scan_patients`]).
async fn insert_job_refs(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    r: &JobRefs<'_>,
    scanning: bool,
) -> Result<(), DbError> {
    tx.batch_execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
        .await?;
    let rows = tx
        .query(
            &job_refs_sql(scanning),
            &[
                &id,
                &r.source_types,
                &r.target_types,
                &r.transaction_time,
                &r.since,
            ],
        )
        .await?;
    let column = |n: usize| -> Vec<&str> { rows.iter().map(|r| r.get(n)).collect() };
    tx.execute(
        "INSERT INTO export_job_refs (job_id, target_type, target_id, source_type, source_id)
         SELECT $1, u.tt, u.ti, u.st, u.si
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(tt, ti, st, si)",
        &[&id, &column(0), &column(1), &column(2), &column(3)],
    )
    .await?;
    Ok(())
}

/// The statement selecting a job's `export_job_refs` rows (target type, target id, source type,
/// source id), naming $1 the job, $2 the source types, $3 the target types, $4 the transaction
/// time and $5 `_since`.
///
/// One row per referenced resource (the items read the targets), except that every source of
/// a reference to a resource that does not exist is kept (the dangling references reported in
/// error[]; a present target's row names no source: nothing reads it): a job's references far
/// outnumber the resources they name. Computed once at planning, instead of joining the
/// compartment to its references again for every AdditionalResources type and its
/// dangling-reference check.
///
/// Sources current at the transaction time: those not in `changed` (deleted, or written
/// since), a handful found through two indexes, instead of checking each source against
/// `resources` (a random heap access each). References are one row per source with target
/// arrays: only sources with a wanted target type pass (an array test in the parallel scan),
/// and their arrays are expanded in the select list (a ProjectSet; `unnest` in FROM would fill
/// a tuplestore per source) straight into the distinct targets. Each target's presence is one
/// index probe (an EXISTS is planned as a hash of the whole `resources` table); the sources are
/// read again only when a target is missing. Selected, then inserted: Postgres runs no part of
/// an INSERT … SELECT in parallel (docs/BENCHMARKS.md, "What moved the numbers").
fn job_refs_sql(scanning: bool) -> String {
    let sources_from = if scanning {
        // Sources of the job's patients straight from their rows: a parallel scan of
        // `resource_refs` (each patient of a source a row of a ProjectSet) semi-joined to
        // the job's patients, cheaper than `compartment` joined to the job's patients and
        // to `resource_refs` (the scanned rows' test of `in_job_patients` has a correlated
        // part, which no parallel worker runs). A source of two of the job's patients comes
        // twice: its targets are grouped, its missing ones made distinct.
        "FROM (SELECT f.source_type, f.source_id, f.target_types, f.target_ids,
                      unnest(f.patients) AS patient_id
               FROM resource_refs f
               WHERE f.source_type = ANY($2) AND f.target_types && $3::text[]) f
         WHERE f.patient_id IN (SELECT jp.patient_id FROM export_job_patients jp
                                WHERE jp.job_id = $1) AND"
    } else {
        "FROM export_job_patients jp
         JOIN compartment c ON c.patient_id = jp.patient_id AND c.resource_type = ANY($2)
         JOIN resource_refs f ON f.source_type = c.resource_type AND f.source_id = c.resource_id
         WHERE jp.job_id = $1 AND"
    };
    format!(
        "WITH changed AS MATERIALIZED (
             SELECT s.resource_type, s.id FROM resources s
             WHERE s.resource_type = ANY($2) AND (s.deleted OR s.last_updated > $4)),
         sources AS NOT MATERIALIZED (
             SELECT f.source_type, f.source_id, f.target_types, f.target_ids
             {sources_from} f.target_types && $3::text[]
               AND NOT EXISTS (SELECT 1 FROM changed ch
                               WHERE ch.resource_type = f.source_type AND ch.id = f.source_id)
               AND ($5::timestamptz IS NULL
                    OR EXISTS (SELECT 1 FROM resources s
                               WHERE s.resource_type = f.source_type AND s.id = f.source_id
                                 AND s.last_updated > $5))),
         targets AS MATERIALIZED (
             SELECT u.target_type, u.target_id FROM (
               SELECT unnest(s.target_types) AS target_type, unnest(s.target_ids) AS target_id
               FROM sources s) u
             WHERE u.target_type = ANY($3)
             GROUP BY u.target_type, u.target_id),
         checked AS MATERIALIZED (
             SELECT g.target_type, g.target_id, p.present IS NOT NULL AS present
             FROM targets g
             LEFT JOIN LATERAL (SELECT true AS present FROM resources t
                                WHERE t.resource_type = g.target_type AND t.id = g.target_id
                                  AND NOT t.deleted LIMIT 1) p ON true)
         SELECT g.target_type, g.target_id, '' AS source_type, '' AS source_id
         FROM checked g WHERE g.present
         UNION ALL
         SELECT DISTINCT u.target_type, u.target_id, u.source_type, u.source_id FROM (
             SELECT unnest(s.target_types) AS target_type, unnest(s.target_ids) AS target_id,
                    s.source_type, s.source_id
             FROM sources s
             -- Only when a target is missing: the sources are read again for it.
             WHERE EXISTS (SELECT 1 FROM checked g WHERE NOT g.present)) u
         WHERE (u.target_type, u.target_id) IN (SELECT g.target_type, g.target_id
                                                FROM checked g WHERE NOT g.present)"
    )
}

/// What planning knows of the job's data: the table's size, and when the job's share of it
/// (`fraction`) exceeds `item_bytes`, a sample of the ids and sizes of `resource_types`.
async fn measure_data(
    tx: &deadpool_postgres::Transaction<'_>,
    resource_types: &[String],
    fraction: f64,
    item_bytes: u64,
) -> Result<DataSizes, DbError> {
    let row = tx
        .query_one(
            "SELECT pg_table_size('resources')::int8, greatest(reltuples, 0)::float8
             FROM pg_class WHERE oid = 'resources'::regclass",
            &[],
        )
        .await?;
    let (table_bytes, tuples): (i64, f64) = (row.get(0), row.get(1));
    let mut sizes = DataSizes {
        fraction,
        table_bytes: table_bytes.max(0) as u64,
        ..Default::default()
    };
    if sizes.table_bytes as f64 * fraction > item_bytes as f64 && !resource_types.is_empty() {
        // A fixed seed: the same data gives the same plan (and the same files), however many
        // exporters then share the work.
        let percent = if tuples <= SAMPLE_ROWS {
            100.0
        } else {
            (100.0 * SAMPLE_ROWS / tuples).clamp(0.01, 100.0)
        };
        sizes.samples = sample_sizes(tx, resource_types, percent).await?;
        sizes.scale = 100.0 / percent;
    }
    Ok(sizes)
}

/// (type, id, bytes) of `percent` of the resources of `resource_types` (the same rows every
/// time), sorted by type and id.
async fn sample_sizes(
    tx: &deadpool_postgres::Transaction<'_>,
    resource_types: &[String],
    percent: f64,
) -> Result<Vec<(String, String, i64)>, DbError> {
    // Unordered: sorting the sampled ids in the database (by the column's collation, and
    // through disk) was most of this statement. They are sorted here by bytes, the
    // order the database compares ids in (every key column has the "C" collation,
    // migration 0015), so the cuts make the ranges a partition of the ids.
    let rows = tx
        .query(
            "SELECT resource_type, id, octet_length(resource)::int8 + 1
             FROM resources TABLESAMPLE SYSTEM ($1::float4) REPEATABLE (0)
             WHERE resource_type = ANY($2) AND NOT deleted",
            &[&(percent as f32), &resource_types],
        )
        .await?;
    let mut samples: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    samples.sort_unstable();
    Ok(samples)
}
