//! `resources`, `resource_history`, `compartment`, `resource_refs`: writes from the loader and
//! the reads of the exporter.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{DbError, Pool};
use crate::fhir::instant::format_instant;
use crate::fhir::scan::Meta;

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
    let types: Vec<&str> = batch.iter().map(|r| r.resource_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let now: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
    let existing: HashMap<(String, String), i64> = if assume_new {
        HashMap::new()
    } else {
        tx.query(
            "SELECT r.resource_type, r.id, r.version_id FROM resources r
             JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON r.resource_type = k.t AND r.id = k.i",
            &[&types, &ids],
        )
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect()
    };

    // Rows to replace exist only for resources stored before; a first load has none, and its
    // statements then touch nothing (a DELETE of unknown keys over a fast-growing table was
    // planned as a scan with the statistics of the empty table: a load slowed down as it went).
    let (old_types, old_ids): (Vec<&str>, Vec<&str>) = existing
        .keys()
        .map(|(t, i)| (t.as_str(), i.as_str()))
        .unzip();

    let mut versions = Vec::with_capacity(batch.len());
    let mut texts = Vec::with_capacity(batch.len());
    // The meta every new resource of this batch gets when it has none (formatted once).
    let first_meta = meta_member(1, &now)?;
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
        texts.push(stamp_meta(&r.text, r.meta, version, &now, &first_meta)?);
    }

    if old_types.is_empty() {
        // Only new resources (a first load): streamed in with binary COPY, which Postgres
        // stores in multi-row batches, instead of an INSERT over `unnest` arrays.
        copy_new_resources(&tx, batch, &versions, &texts, &now).await?;
    } else {
        let texts: Vec<String> = texts.iter().map(Stamped::to_text).collect();
        replace_resources(&tx, batch, &versions, &texts, &now, &old_types, &old_ids).await?;
    }
    copy_links(&tx, batch).await?;
    let provenance: Vec<&NewResource> = batch
        .iter()
        .filter(|r| r.resource_type == "Provenance")
        .collect();
    if !provenance.is_empty() {
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
    }
    tx.commit().await?;
    Ok(!existing.is_empty())
}

/// Streams `rows` into `COPY … FROM STDIN (FORMAT binary)` of `sql`, with the columns' `types`.
/// Rows are encoded into chunks of about 1 MiB (tokio-postgres's `BinaryCopyInWriter` sends
/// every 4 KiB: a message through the connection task and a socket write each, a sixth of a
/// load's writer CPU).
async fn copy_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    types: &[tokio_postgres::types::Type],
    rows: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>>,
) -> Result<(), DbError> {
    use bytes::{BufMut, BytesMut};
    use futures::SinkExt;
    use tokio_postgres::types::IsNull;
    const CHUNK: usize = 1 << 20;
    let sink = tx.copy_in::<_, bytes::Bytes>(sql).await?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK + 64 * 1024);
    // The binary COPY header: signature, flags, header extension length.
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
    for row in rows {
        buf.put_i16(types.len() as i16);
        for (value, ty) in row.iter().zip(types) {
            let at = buf.len();
            buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut buf)
                .map_err(DbError::Encode)?
            {
                IsNull::Yes => -1,
                IsNull::No => (buf.len() - at - 4) as i32,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        if buf.len() >= CHUNK {
            // Sent a chunk per message: the connection copies each message into its write
            // buffer, which would otherwise hold a second copy of a large resource.
            let mut rows = buf.split().freeze();
            while rows.len() > CHUNK {
                sink.send(rows.split_to(CHUNK)).await?;
            }
            sink.send(rows).await?;
            // The next chunk's whole buffer at once (the previous one's, once the connection
            // has written it): left empty, the buffer grew by doubling from 64 kB, copying each
            // chunk about once more and faulting in fresh pages for every step.
            buf.reserve(CHUNK + 64 * 1024);
        }
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Stores resources none of which exists yet by binary COPY. A resource stored meanwhile by
/// another process fails the batch's transaction with a unique violation (the caller retries the
/// batch, which then takes the upsert path).
async fn copy_new_resources(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[NewResource],
    versions: &[i64],
    texts: &[Stamped<'_>],
    now: &DateTime<Utc>,
) -> Result<(), DbError> {
    use tokio_postgres::types::Type;
    let patients: Vec<Option<Vec<&str>>> = batch.iter().map(NewResource::patient_ids).collect();
    copy_rows(
        tx,
        "COPY resources (resource_type, id, version_id, last_updated, deleted, resource, patients)
         FROM STDIN (FORMAT binary)",
        &[
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMPTZ,
            Type::BOOL,
            Type::TEXT,
            Type::TEXT_ARRAY,
        ],
        batch
            .iter()
            .zip(versions)
            .zip(texts)
            .zip(&patients)
            .map(|(((r, version), text), patients)| {
                vec![
                    &r.resource_type as &(dyn tokio_postgres::types::ToSql + Sync),
                    &r.id,
                    version,
                    now,
                    &false,
                    text,
                    patients,
                ]
            })
            .collect(),
    )
    .await
}

/// The compartment and reference rows of a batch, by binary COPY: none exists (new resources
/// have none; those of updated resources were deleted first).
async fn copy_links(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[NewResource],
) -> Result<(), DbError> {
    use tokio_postgres::types::{ToSql, Type};
    copy_rows(
        tx,
        "COPY compartment (patient_id, resource_type, resource_id) FROM STDIN (FORMAT binary)",
        &[Type::TEXT, Type::TEXT, Type::TEXT],
        batch
            .iter()
            .flat_map(|r| {
                r.patients
                    .iter()
                    .map(move |p| vec![p as &(dyn ToSql + Sync), &r.resource_type, &r.id])
            })
            .collect(),
    )
    .await?;
    // One row per source that references anything: its targets as two parallel arrays.
    // With the source's compartment patients (planning a job that scans compartments reads
    // the references without joining `compartment`).
    type Targets<'a> = (
        &'a NewResource,
        Vec<&'a str>,
        Vec<&'a str>,
        Option<Vec<&'a str>>,
    );
    let targets: Vec<Targets> = batch
        .iter()
        .filter(|r| !r.refs.is_empty())
        .map(|r| {
            let (types, ids) = r.refs.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
            (r, types, ids, r.patient_ids())
        })
        .collect();
    copy_rows(
        tx,
        "COPY resource_refs (source_type, source_id, target_types, target_ids, patients)
         FROM STDIN (FORMAT binary)",
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
        ],
        targets
            .iter()
            .map(|(r, types, ids, patients)| {
                vec![
                    &r.resource_type as &(dyn ToSql + Sync),
                    &r.id,
                    types,
                    ids,
                    patients,
                ]
            })
            .collect(),
    )
    .await
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
    tx.execute(
        "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, resource,
             written_xid)
         SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.resource,
             r.written_xid
         FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(t, i)
           ON r.resource_type = k.t AND r.id = k.i
         ON CONFLICT DO NOTHING",
        &[&old_types, &old_ids],
    )
    .await?;
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

/// What `provenance_targets` holds for one Provenance.
#[derive(Debug, Clone, Default)]
pub struct ProvenanceTargets {
    /// Its relative `target` references.
    pub targets: BTreeSet<(String, String)>,
    pub recorded: Option<DateTime<Utc>>,
}

/// What is stored of a resource: its text with `meta.versionId` and `meta.lastUpdated` set
/// where absent. Written into the COPY rows as it is, in pieces: a text stored as received, or
/// with a `meta` appended, is not copied into a String of its own first.
#[derive(Debug)]
enum Stamped<'a> {
    /// The text as received.
    Same(&'a str),
    /// The text without its closing brace, then a `,"meta":{…}}` member that closes it.
    Appended(&'a str, std::borrow::Cow<'a, str>),
    /// The text rewritten (a `meta` that lacked one of the two).
    Rewritten(String),
}

impl Stamped<'_> {
    fn pieces(&self) -> (&str, &str) {
        match self {
            Stamped::Same(text) => (text, ""),
            Stamped::Appended(head, meta) => (head, meta),
            Stamped::Rewritten(text) => (text, ""),
        }
    }

    fn to_text(&self) -> String {
        let (head, tail) = self.pieces();
        [head, tail].concat()
    }
}

impl tokio_postgres::types::ToSql for Stamped<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let (head, tail) = self.pieces();
        // Text's binary format is its UTF-8 bytes, as `&str`'s `to_sql` writes them.
        head.to_sql(ty, out)?;
        out.extend_from_slice(tail.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `,"meta":{"versionId":…,"lastUpdated":…}}`: a `meta` member and the closing brace.
fn meta_member(version: i64, now: &DateTime<Utc>) -> Result<String, serde_json::Error> {
    Ok(format!(
        ",\"meta\":{{\"versionId\":{},\"lastUpdated\":{}}}}}",
        serde_json::to_string(&version.to_string())?,
        serde_json::to_string(&format_instant(now))?
    ))
}

/// `text` with `meta.versionId` and `meta.lastUpdated` set where absent; every other byte of
/// the resource (numbers above all) as it was. `first_meta`: [`meta_member`] of version 1.
fn stamp_meta<'a>(
    text: &'a str,
    meta: Meta,
    version: i64,
    now: &DateTime<Utc>,
    first_meta: &'a str,
) -> Result<Stamped<'a>, serde_json::Error> {
    use crate::fhir::raw::RawObject;
    match meta {
        Meta::Complete => return Ok(Stamped::Same(text)),
        // Appended as the last member, as `RawObject::set` would, without parsing the text
        // again (the object is one line of JSON ending with its closing brace).
        Meta::Absent if text.ends_with('}') && text.len() > 2 => {
            let member = if version == 1 {
                std::borrow::Cow::Borrowed(first_meta)
            } else {
                std::borrow::Cow::Owned(meta_member(version, now)?)
            };
            return Ok(Stamped::Appended(&text[..text.len() - 1], member));
        }
        _ => {}
    }
    let mut resource = RawObject::parse(text)?;
    let mut meta = match resource.get("meta") {
        Some(m) => match RawObject::parse(m.get()) {
            Ok(m) => m,
            // A `meta` that is not an object is kept as it was.
            Err(_) => return Ok(Stamped::Rewritten(resource.to_text())),
        },
        None => RawObject::default(),
    };
    let has_version = meta.get("versionId").is_some();
    let has_updated = meta.get("lastUpdated").is_some();
    if has_version && has_updated {
        return Ok(Stamped::Same(text));
    }
    meta.set_if_absent("versionId", &Value::String(version.to_string()));
    meta.set_if_absent("lastUpdated", &Value::String(format_instant(now)));
    resource.set("meta", meta.into_raw());
    Ok(Stamped::Rewritten(resource.to_text()))
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
    tx.execute(
        "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, resource,
             written_xid)
         SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.resource,
             r.written_xid
         FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(t, i)
           ON r.resource_type = k.t AND r.id = k.i
         WHERE NOT r.deleted
         ON CONFLICT DO NOTHING",
        &[&types, &ids],
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `to_sql` writes: text's binary format, the stored bytes.
    fn written(stamped: &Stamped<'_>) -> String {
        use tokio_postgres::types::{ToSql, Type};
        let mut out = bytes::BytesMut::new();
        stamped.to_sql_checked(&Type::TEXT, &mut out).unwrap();
        let written = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(written, stamped.to_text());
        written
    }

    #[test]
    fn stamping_adds_only_what_meta_lacks_and_keeps_every_other_byte() {
        let now: DateTime<Utc> = "2026-12-03T05:04:03.123Z".parse().unwrap();
        let first = meta_member(1, &now).unwrap();
        let stamp = |text: &str, meta, version| {
            written(&stamp_meta(text, meta, version, &now, &first).unwrap())
        };
        let text = r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":1.50}}"#;
        assert_eq!(
            stamp(text, Meta::Absent, 1),
            r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":1.50},"meta":{"versionId":"1","lastUpdated":"2026-12-03T05:04:03.123Z"}}"#
        );
        assert!(stamp(text, Meta::Absent, 7).contains(r#""meta":{"versionId":"7","#));
        let complete = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"}}"#;
        assert_eq!(stamp(complete, Meta::Complete, 4), complete);
        assert_eq!(
            stamp(
                r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3"},"n":1e2}"#,
                Meta::Partial,
                4
            ),
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2026-12-03T05:04:03.123Z"},"n":1e2}"#
        );
    }

    #[test]
    fn patients_become_a_quoted_array_literal() {
        assert_eq!(array_literal(&["a", "b-1"]), r#"{"a","b-1"}"#);
        assert_eq!(array_literal(&[r#"q"x\y"#]), r#"{"q\"x\\y"}"#);
        assert_eq!(array_literal(&[]), "{}");
    }
}

/// What [`check_stored_keys`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Rows whose text is not a JSON resource with their key's resourceType and id (at most
    /// `limit` of them, in key order).
    pub bad: Vec<(String, String)>,
    /// How many rows fail, all of them.
    pub bad_count: i64,
    /// Whether the key check now holds for every stored row (VALIDATE CONSTRAINT succeeded):
    /// the exporter copies stored text as it is, and this is what makes that text sound.
    pub validated: bool,
    /// Whether the failing rows were removed (`repair`).
    pub removed: bool,
}

/// Checks every stored row against `resources_key_matches_json`, which migrations 0010 and 0013
/// added NOT VALID (rows stored before it were never checked). When every row passes, the
/// constraint is validated (one scan under a SHARE UPDATE EXCLUSIVE lock: loads, exports and
/// deletes go on meanwhile). Otherwise nothing changes and the failing rows are returned: which
/// of a row's key and text is right is not in the database, so no repair is made here.
pub async fn check_stored_keys(pool: &Pool, limit: i64, repair: bool) -> Result<KeyCheck, DbError> {
    let mut client = pool.get().await?;
    let validated: bool = client
        .query_one(
            "SELECT convalidated FROM pg_constraint
             WHERE conrelid = 'resources'::regclass AND conname = 'resources_key_matches_json'",
            &[],
        )
        .await?
        .get(0);
    if validated
        || client
            .batch_execute("ALTER TABLE resources VALIDATE CONSTRAINT resources_key_matches_json")
            .await
            .is_ok()
    {
        return Ok(KeyCheck {
            validated: true,
            ..KeyCheck::default()
        });
    }
    // The same expression as the constraint's, row by row; text that is not JSON (the cast
    // raises) fails it rather than ending the scan.
    client
        .batch_execute(
            r#"CREATE OR REPLACE FUNCTION pg_temp.resource_key_ok(t text, i text, r text)
               RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN
                   RETURN coalesce(r::json IS NOT NULL
                       AND (starts_with(r, '{"resourceType":' || to_json(t)::text
                                           || ',"id":' || to_json(i)::text || ',')
                            OR json_populate_record(NULL::fhir_resource_key, r::json)
                               IS NOT DISTINCT FROM ROW(t, i)::fhir_resource_key), false);
               EXCEPTION WHEN OTHERS THEN
                   RETURN false;
               END $$"#,
        )
        .await?;
    let rows = client
        .query(
            "SELECT resource_type, id, count(*) OVER () FROM resources
             WHERE NOT pg_temp.resource_key_ok(resource_type, id, resource)
             ORDER BY resource_type, id",
            &[],
        )
        .await?;
    let bad_count = rows.first().map_or(0, |r| r.get::<_, i64>(2));
    let bad = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if repair && bad_count > 0 {
        // The failing rows go, with what the loader derived from them (compartment membership,
        // references, Provenance targets), in one transaction; then the check holds.
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE bad_keys ON COMMIT DROP AS
                 SELECT resource_type, id FROM resources
                 WHERE NOT pg_temp.resource_key_ok(resource_type, id, resource);
             DELETE FROM resources r USING bad_keys b
                 WHERE r.resource_type = b.resource_type AND r.id = b.id;
             DELETE FROM compartment c USING bad_keys b
                 WHERE c.resource_type = b.resource_type AND c.resource_id = b.id;
             DELETE FROM resource_refs f USING bad_keys b
                 WHERE f.source_type = b.resource_type AND f.source_id = b.id;
             DELETE FROM provenance_targets p USING bad_keys b
                 WHERE b.resource_type = 'Provenance' AND p.provenance_id = b.id;
             ALTER TABLE resources VALIDATE CONSTRAINT resources_key_matches_json;",
        )
        .await?;
        tx.commit().await?;
        return Ok(KeyCheck {
            bad,
            bad_count,
            validated: true,
            removed: true,
        });
    }
    if bad_count == 0 {
        // Every row passes now (one was repaired meanwhile): validate, or say why not.
        client
            .batch_execute("ALTER TABLE resources VALIDATE CONSTRAINT resources_key_matches_json")
            .await?;
        return Ok(KeyCheck {
            validated: true,
            ..KeyCheck::default()
        });
    }
    Ok(KeyCheck {
        bad,
        bad_count,
        validated: false,
        removed: false,
    })
}
