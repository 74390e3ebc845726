//! The key check of stored rows (`bulk-export check`): every row's text a JSON resource with
//! its key's resourceType and id.

use crate::db::{DbError, Pool};

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
/// deletes go on meanwhile). Otherwise the failing rows are returned and nothing changes, unless
/// `repair`: which of a row's key and text is right is not in the database, so the repair
/// removes those rows.
pub async fn check_stored_keys(pool: &Pool, limit: i64, repair: bool) -> Result<KeyCheck, DbError> {
    let mut client = pool.get().await?;
    if validate_key_check(&client).await? {
        return Ok(KeyCheck {
            validated: true,
            ..KeyCheck::default()
        });
    }
    create_key_test(&client).await?;
    let (bad, bad_count) = select_bad_keys(&client, limit).await?;
    if repair && bad_count > 0 {
        remove_bad_keys(&mut client).await?;
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

/// Whether the key check holds for every row: validated before, or now.
async fn validate_key_check(client: &deadpool_postgres::Client) -> Result<bool, DbError> {
    let validated: bool = client
        .query_one(
            "SELECT convalidated FROM pg_constraint
             WHERE conrelid = 'resources'::regclass AND conname = 'resources_key_matches_json'",
            &[],
        )
        .await?
        .get(0);
    Ok(validated
        || client
            .batch_execute("ALTER TABLE resources VALIDATE CONSTRAINT resources_key_matches_json")
            .await
            .is_ok())
}

/// `pg_temp.resource_key_ok(type, id, text)`: the constraint's expression, row by row; text
/// that is not JSON (the cast raises) fails it rather than ending the scan.
async fn create_key_test(client: &deadpool_postgres::Client) -> Result<(), DbError> {
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
    Ok(())
}

/// The keys of the rows that fail the check (the first `limit`, in key order), and how many
/// fail.
async fn select_bad_keys(
    client: &deadpool_postgres::Client,
    limit: i64,
) -> Result<(Vec<(String, String)>, i64), DbError> {
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
    Ok((bad, bad_count))
}

/// Removes the failing rows with what the loader derived from them (compartment membership,
/// references, Provenance targets), in one transaction; then validates the check.
async fn remove_bad_keys(client: &mut deadpool_postgres::Client) -> Result<(), DbError> {
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
    Ok(())
}
