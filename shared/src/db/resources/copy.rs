//! Binary COPY: rows encoded into chunks of about 1 MiB and streamed in, for new resources and
//! the compartment and reference rows of a batch.

use chrono::{DateTime, Utc};

use super::NewResource;
use crate::db::DbError;
use crate::fhir::stamp::Stamped;

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
pub(super) async fn copy_new_resources(
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
pub(super) async fn copy_links(
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

/// A stamped text is written as its pieces, without joining them first.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::scan::Meta;
    use crate::fhir::stamp::{meta_member, stamp_meta};

    #[test]
    fn a_stamped_text_is_written_as_the_text_it_stands_for() {
        use tokio_postgres::types::{ToSql, Type};
        let now: DateTime<Utc> = "2026-12-03T05:04:03.123Z".parse().unwrap();
        let first = meta_member(1, &now).unwrap();
        for (text, meta) in [
            (r#"{"resourceType":"Patient","id":"p"}"#, Meta::Absent),
            (
                r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3"}}"#,
                Meta::Partial,
            ),
            (
                r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"}}"#,
                Meta::Complete,
            ),
        ] {
            let stamped = stamp_meta(text, meta, 1, &now, &first).unwrap();
            let mut out = bytes::BytesMut::new();
            stamped.to_sql_checked(&Type::TEXT, &mut out).unwrap();
            assert_eq!(String::from_utf8(out.to_vec()).unwrap(), stamped.to_text());
        }
    }
}
