//! Storing: batches of resources (new ones by COPY, existing ones replaced with their prior
//! versions moved to history) and deletions (tombstones).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::copy::{copy_links, copy_new_resources};
use super::NewResource;
use crate::db::{DbError, Pool};
use crate::fhir::stamp::{meta_member, stamp_meta, Stamped};

/// What [`upsert_resources`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    /// Resources stored (after removing a batch's duplicates).
    pub stored: u64,
    /// Whether some of them existed (their prior versions moved to history).
    pub replaced: bool,
}

/// Upserts a batch in one transaction: prior versions move to `resource_history`, meta.versionId
/// and meta.lastUpdated are stamped when absent, compartment and references are replaced.
/// Later duplicates of the same (type, id) in a batch win.
///
/// `assume_new`: store the batch as new resources without first looking up which exist (the
/// lookup is an index probe per resource, a large share of Postgres's work in a first load); if one does exist, the key refuses it, the batch is rolled back and stored
/// again after the lookup. The loader assumes so while its batches keep being new.
pub async fn upsert_resources(
    pool: &Pool,
    batch: Vec<NewResource>,
    assume_new: bool,
) -> Result<Upserted, DbError> {
    // The last of each (type, id) stays, in the batch's order; keys are borrowed, not copied.
    let mut batch = batch;
    let keep: Option<Vec<bool>> = {
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            last.insert((&r.resource_type, &r.id), i);
        }
        (last.len() < batch.len()).then(|| {
            batch
                .iter()
                .enumerate()
                .map(|(i, r)| last[&(r.resource_type.as_str(), r.id.as_str())] == i)
                .collect()
        })
    };
    if let Some(keep) = keep {
        let mut flags = keep.into_iter();
        batch.retain(|_| flags.next().unwrap_or(true));
    }
    if batch.is_empty() {
        return Ok(Upserted {
            stored: 0,
            replaced: false,
        });
    }
    let replaced = match store_batch(pool, &batch, assume_new).await {
        // One of these resources exists (assumed new, or another process stored it between
        // the lookup and the COPY): the batch is rolled back, and stored again as the update
        // it is.
        Err(DbError::Postgres(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            store_batch(pool, &batch, false).await?
        }
        other => other?,
    };
    Ok(Upserted {
        stored: batch.len() as u64,
        replaced,
    })
}

/// One attempt at storing a batch without duplicates, in one transaction; whether some of its
/// resources existed.
async fn store_batch(
    pool: &Pool,
    batch: &[NewResource],
    assume_new: bool,
) -> Result<bool, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let now: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
    let existing = if assume_new {
        HashMap::new()
    } else {
        select_versions(&tx, batch).await?
    };
    // Rows to replace exist only for resources stored before; a first load has none, and its
    // statements then touch nothing (a DELETE of unknown keys over a fast-growing table was
    // planned as a scan with the statistics of the empty table: a load slowed down as it went).
    let (old_types, old_ids): (Vec<&str>, Vec<&str>) = existing
        .keys()
        .map(|(t, i)| (t.as_str(), i.as_str()))
        .unzip();
    // The meta every new resource of this batch gets when it has none (formatted once).
    let first_meta = meta_member(1, &now)?;
    let (versions, texts) = stamp_batch(batch, &existing, &now, &first_meta)?;
    if old_types.is_empty() {
        // Only new resources (a first load): streamed in with binary COPY, which Postgres
        // stores in multi-row batches, instead of an INSERT over `unnest` arrays.
        copy_new_resources(&tx, batch, &versions, &texts, &now).await?;
    } else {
        let texts: Vec<String> = texts.iter().map(Stamped::to_text).collect();
        replace_resources(&tx, batch, &versions, &texts, &now, &old_types, &old_ids).await?;
    }
    copy_links(&tx, batch).await?;
    replace_provenance_targets(&tx, batch).await?;
    tx.commit().await?;
    Ok(!existing.is_empty())
}

/// The current versions of the batch's resources that exist, by (type, id).
async fn select_versions(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[NewResource],
) -> Result<HashMap<(String, String), i64>, DbError> {
    let types: Vec<&str> = batch.iter().map(|r| r.resource_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    Ok(tx
        .query(
            "SELECT r.resource_type, r.id, r.version_id FROM resources r
             JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON r.resource_type = k.t AND r.id = k.i",
            &[&types, &ids],
        )
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect())
}

/// Each resource's new version (1, or one more than `existing`'s) and its stamped text.
fn stamp_batch<'a>(
    batch: &'a [NewResource],
    existing: &HashMap<(String, String), i64>,
    now: &DateTime<Utc>,
    first_meta: &'a str,
) -> Result<(Vec<i64>, Vec<Stamped<'a>>), serde_json::Error> {
    let mut versions = Vec::with_capacity(batch.len());
    let mut texts = Vec::with_capacity(batch.len());
    for r in batch {
        // A first load finds nothing: no key is built to look it up.
        let version = if existing.is_empty() {
            1
        } else {
            existing
                .get(&(r.resource_type.clone(), r.id.clone()))
                .map_or(1, |v| v + 1)
        };
        versions.push(version);
        texts.push(stamp_meta(&r.text, r.meta, version, now, first_meta)?);
    }
    Ok((versions, texts))
}

/// The batch's Provenance targets replace those stored for the same Provenance.
async fn replace_provenance_targets(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[NewResource],
) -> Result<(), DbError> {
    let provenance: Vec<&NewResource> = batch
        .iter()
        .filter(|r| r.resource_type == "Provenance")
        .collect();
    if provenance.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = provenance.iter().map(|r| r.id.as_str()).collect();
    tx.execute(
        "DELETE FROM provenance_targets WHERE provenance_id = ANY($1)",
        &[&ids],
    )
    .await?;
    let (mut pi, mut pt, mut pti, mut pr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &provenance {
        let Some(p) = &r.provenance else { continue };
        for (t, i) in &p.targets {
            pi.push(r.id.as_str());
            pt.push(t.as_str());
            pti.push(i.as_str());
            pr.push(p.recorded);
        }
    }
    tx.execute(
        "INSERT INTO provenance_targets (provenance_id, target_type, target_id, recorded)
         SELECT i, t, ti, coalesce(rec, '-infinity')
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS k(i, t, ti, rec)
         ON CONFLICT DO NOTHING",
        &[&pi, &pt, &pti, &pr],
    )
    .await?;
    Ok(())
}

/// Copies the current versions of the resources `types`/`ids` to `resource_history` (a version
/// already there stays); `live_only` leaves out tombstones.
async fn archive_current(
    tx: &deadpool_postgres::Transaction<'_>,
    types: &[&str],
    ids: &[&str],
    live_only: bool,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, resource,
             written_xid)
         SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.resource,
             r.written_xid
         FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(t, i)
           ON r.resource_type = k.t AND r.id = k.i
         WHERE NOT (r.deleted AND $3)
         ON CONFLICT DO NOTHING",
        &[&types, &ids, &live_only],
    )
    .await?;
    Ok(())
}

/// Stores a batch some of whose resources exist (`old_types`/`old_ids`): their current
/// versions move to history, and their compartment and reference rows are deleted (the caller
/// writes the batch's anew).
async fn replace_resources(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[NewResource],
    versions: &[i64],
    texts: &[String],
    now: &DateTime<Utc>,
    old_types: &[&str],
    old_ids: &[&str],
) -> Result<(), DbError> {
    let types: Vec<&str> = batch.iter().map(|r| r.resource_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    archive_current(tx, old_types, old_ids, false).await?;
    // The prior versions' compartment rows, found through the patients on their rows (the
    // compartment's key is by patient), before those are replaced.
    tx.execute(
        "DELETE FROM compartment c USING (
             SELECT r.resource_type, r.id, unnest(r.patients) AS patient_id
             FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(t, i)
               ON r.resource_type = k.t AND r.id = k.i) o
         WHERE c.patient_id = o.patient_id AND c.resource_type = o.resource_type
           AND c.resource_id = o.id",
        &[&old_types, &old_ids],
    )
    .await?;
    // A resource's patients as one text value (`{a,b}`; NULL: none): arrays of arrays of
    // different lengths are not a Postgres array.
    let patients: Vec<Option<String>> = batch
        .iter()
        .map(|r| r.patient_ids().map(|p| array_literal(&p)))
        .collect();
    tx.execute(
        "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, resource, patients)
         SELECT t, i, v, $4, false, r, p::text[]
         FROM unnest($1::text[], $2::text[], $3::int8[], $5::text[], $6::text[]) AS k(t, i, v, r, p)
         ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id,
             written_xid = pg_current_xact_id(),
             last_updated = excluded.last_updated, deleted = false, resource = excluded.resource,
             patients = excluded.patients",
        &[&types, &ids, &versions, now, &texts, &patients],
    )
    .await?;
    tx.execute(
        "DELETE FROM resource_refs f USING unnest($1::text[], $2::text[]) AS k(t, i)
         WHERE f.source_type = k.t AND f.source_id = k.i",
        &[&old_types, &old_ids],
    )
    .await?;
    Ok(())
}

/// Deletes resources (tombstones): the current version moves to history and the row is marked
/// deleted with a new version and `last_updated`, so `_since` exports list it in `deleted[]`.
/// Compartment and reference rows stay, to scope those lists. Returns how many were deleted
/// (unknown or already deleted resources are skipped).
pub async fn delete_resources(pool: &Pool, keys: &[(String, String)]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let types: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, i)| i.as_str()).collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    archive_current(&tx, &types, &ids, true).await?;
    let n = tx
        .execute(
            "UPDATE resources r SET deleted = true, version_id = r.version_id + 1, last_updated = now(),
                 written_xid = pg_current_xact_id()
             FROM unnest($1::text[], $2::text[]) AS k(t, i)
             WHERE r.resource_type = k.t AND r.id = k.i AND NOT r.deleted",
            &[&types, &ids],
        )
        .await?;
    // A deleted Provenance is no longer any resource's latest.
    tx.execute(
        "DELETE FROM provenance_targets p USING unnest($1::text[], $2::text[]) AS k(t, i)
         WHERE k.t = 'Provenance' AND p.provenance_id = k.i",
        &[&types, &ids],
    )
    .await?;
    tx.commit().await?;
    Ok(n)
}

/// A Postgres array literal of text values (`{"a","b"}`), every element quoted and escaped.
fn array_literal(values: &[&str]) -> String {
    let mut out = String::from("{");
    for (n, v) in values.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_become_a_quoted_array_literal() {
        assert_eq!(array_literal(&["a", "b-1"]), r#"{"a","b-1"}"#);
        assert_eq!(array_literal(&[r#"q"x\y"#]), r#"{"q\"x\\y"}"#);
        assert_eq!(array_literal(&[]), "{}");
    }
}
