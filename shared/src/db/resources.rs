//! `resources`, `resource_history`, `compartment`, `resource_refs`: the loader's writes
//! (`write`, by binary COPY where it can: `copy`), the key check (`keys`) and the lookups of
//! the other routes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{DbError, Pool};
use crate::fhir::scan::Meta;

mod copy;
mod keys;
mod write;

pub use keys::{check_stored_keys, KeyCheck};
pub use write::{delete_resources, upsert_resources, Upserted};

/// A parsed resource ready to store.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub resource_type: String,
    pub id: String,
    /// Provenance only: its targets and `recorded` (`provenance_targets`).
    pub provenance: Option<ProvenanceTargets>,
    /// What is stored: the resource's JSON as received, on one line (crate::fhir::raw).
    pub text: String,
    pub patients: BTreeSet<String>,
    pub refs: BTreeSet<(String, String)>,
    /// What its `meta` holds of versionId and lastUpdated (what stamping has to add).
    pub meta: Meta,
}

impl NewResource {
    /// Its compartment's patients as stored in `resources.patients` (None: in no compartment).
    fn patient_ids(&self) -> Option<Vec<&str>> {
        (!self.patients.is_empty()).then(|| self.patients.iter().map(String::as_str).collect())
    }
}

/// What `provenance_targets` holds for one Provenance.
#[derive(Debug, Clone, Default)]
pub struct ProvenanceTargets {
    /// Its relative `target` references.
    pub targets: BTreeSet<(String, String)>,
    pub recorded: Option<DateTime<Utc>>,
}

/// The R4 resource types that have at least one current resource (a loose index scan); stored
/// ViewDefinitions (for `$viewdefinition-export`) are not exported data.
pub async fn select_resource_types(pool: &Pool) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    // Asked before every Patient- or Group-level work item: prepared once per connection.
    let stmt = client
        .prepare_cached(
            "WITH RECURSIVE t AS (
                 SELECT min(resource_type) AS rt FROM resources
                 UNION ALL
                 SELECT (SELECT min(resource_type) FROM resources WHERE resource_type > t.rt)
                 FROM t WHERE t.rt IS NOT NULL)
             SELECT rt FROM t WHERE rt IS NOT NULL",
        )
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|t| crate::fhir::resource_types::is_resource_type(t))
        .collect())
}

/// Stored ViewDefinitions by id (current, not deleted), as JSON.
pub async fn select_view_definitions(
    pool: &Pool,
    ids: &[String],
) -> Result<Vec<(String, Value)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, resource::json FROM resources
             WHERE resource_type = 'ViewDefinition' AND id = ANY($1) AND NOT deleted",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Of `ids`, those that are not current Patients, or (with `group`) not members of that Group.
pub async fn select_unknown_patients(
    pool: &Pool,
    ids: &[String],
    group: Option<&str>,
) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT p FROM unnest($1::text[]) WITH ORDINALITY AS u(p, n)
             WHERE NOT EXISTS (SELECT 1 FROM resources r
                               WHERE r.resource_type = 'Patient' AND r.id = u.p AND NOT r.deleted)
                OR ($2::text IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM resource_refs f, unnest(f.target_types, f.target_ids) AS t(tt, ti)
                       WHERE f.source_type = 'Group' AND f.source_id = $2
                         AND t.tt = 'Patient' AND t.ti = u.p))
             ORDER BY n",
            &[&ids, &group],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Current resources of `resource_type` after `after_id` in id order, at most `limit`, only those
/// in `patient`'s compartment when given: (id, text) pages for `$viewdefinition-run`.
pub async fn select_resource_page(
    pool: &Pool,
    resource_type: &str,
    after_id: &str,
    limit: i64,
    patient: Option<&str>,
) -> Result<Vec<(String, String)>, DbError> {
    let client = pool.get().await?;
    let rows = match patient {
        None => {
            client
                .query(
                    "SELECT id, resource FROM resources
                     WHERE resource_type = $1 AND id > $2 AND NOT deleted
                     ORDER BY id LIMIT $3",
                    &[&resource_type, &after_id, &limit],
                )
                .await?
        }
        Some(p) => {
            client
                .query(
                    "SELECT r.id, r.resource FROM compartment c
                     JOIN resources r ON r.resource_type = c.resource_type AND r.id = c.resource_id
                     WHERE c.patient_id = $4 AND c.resource_type = $1 AND c.resource_id > $2
                       AND NOT r.deleted
                     ORDER BY c.resource_id LIMIT $3",
                    &[&resource_type, &after_id, &limit, &p],
                )
                .await?
        }
    };
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether a current, non-deleted resource exists.
pub async fn resource_exists(pool: &Pool, resource_type: &str, id: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT 1 FROM resources WHERE resource_type = $1 AND id = $2 AND NOT deleted",
            &[&resource_type, &id],
        )
        .await?;
    Ok(row.is_some())
}
