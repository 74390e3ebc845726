//! `bulk-export load` and `migrate`: bad lines reported with file and line while good lines
//! load, versions and history kept, Bundles with urn:uuid references, the CLI itself.

use std::process::Command;

use integration_tests::{bulk_export_bin, temp_dir, TestDb};
use shared::db::Pool;

async fn scalar(pool: &Pool, sql: &str) -> i64 {
    let client = pool.get().await.expect("conn");
    client.query_one(sql, &[]).await.expect("query").get(0)
}

#[tokio::test]
async fn bad_lines_are_reported_with_file_and_line_and_good_lines_still_load() {
    let db = TestDb::new().await;
    let file = temp_dir().join("Mixed.ndjson");
    let mut text = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n\
         not json\n\
         {\"resourceType\":\"Patient\"}\n\
         \n\
         {\"resourceType\":\"Unicorn\",\"id\":\"u\"}\n\
         {\"resourceType\":\"Observation\",\"id\":\"o\",\"subject\":{\"reference\":\"Patient/a\"}}\n"
        .to_vec();
    // Latin-1, not UTF-8: refused by its number, not the end of the load.
    text.extend_from_slice(
        b"{\"resourceType\":\"Patient\",\"id\":\"l\",\"name\":[{\"family\":\"M\xfcller\"}]}\n",
    );
    // A CRLF line, and a last line without its newline: both load.
    text.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"crlf\"}\r\n");
    text.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"last\"}");
    std::fs::write(&file, text).expect("write");
    let report = shared::load::load_paths(&db.pool, std::slice::from_ref(&file), |_| {})
        .await
        .expect("load");
    assert_eq!(report.loaded, 4);
    let lines: Vec<usize> = report.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 3, 5, 7]);
    assert!(report.rejected.iter().all(|r| r.file == file));
    assert!(report.rejected[2].message.contains("Unicorn"));
    assert!(
        report.rejected[3].message.contains("not UTF-8"),
        "{}",
        report.rejected[3].message
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM resources").await, 4);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM resources WHERE id IN ('crlf', 'last')"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM compartment WHERE patient_id = 'a'"
        )
        .await,
        2,
        "the Patient and its Observation"
    );
}

#[tokio::test]
async fn reloading_a_resource_keeps_the_prior_version_and_stamps_meta() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let v1 = dir.join("v1.ndjson");
    let v2 = dir.join("v2.ndjson");
    std::fs::write(
        &v1,
        "{\"resourceType\":\"Patient\",\"id\":\"p\",\"gender\":\"male\"}\n",
    )
    .expect("w");
    std::fs::write(
        &v2,
        "{\"resourceType\":\"Patient\",\"id\":\"p\",\"gender\":\"female\"}\n\
         {\"resourceType\":\"Patient\",\"id\":\"q\",\"meta\":{\"versionId\":\"7\",\"lastUpdated\":\"2020-01-01T00:00:00Z\"}}\n",
    )
    .expect("w");
    shared::load::load_paths(&db.pool, &[v1], |_| {})
        .await
        .expect("load");
    shared::load::load_paths(&db.pool, &[v2], |_| {})
        .await
        .expect("load");
    let client = db.pool.get().await.expect("conn");
    let row = client
        .query_one(
            "SELECT version_id, resource FROM resources WHERE id = 'p'",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(row.get::<_, i64>(0), 2);
    let current: serde_json::Value = serde_json::from_str(row.get(1)).expect("json");
    assert_eq!(current["gender"], "female");
    assert_eq!(current["meta"]["versionId"], "2");
    assert!(current["meta"]["lastUpdated"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        serde_json::to_string(&current)
            .expect("s")
            .find("resourceType"),
        Some(2),
        "key order is kept: resourceType first"
    );
    let old = client
        .query_one(
            "SELECT resource FROM resource_history WHERE id = 'p' AND version_id = 1",
            &[],
        )
        .await
        .expect("q");
    let old: serde_json::Value = serde_json::from_str(old.get(0)).expect("json");
    assert_eq!(old["gender"], "male");
    let q = client
        .query_one("SELECT resource FROM resources WHERE id = 'q'", &[])
        .await
        .expect("q");
    let q: serde_json::Value = serde_json::from_str(q.get(0)).expect("json");
    assert_eq!(q["meta"]["versionId"], "7", "meta from the source is kept");
}

#[tokio::test]
async fn bundles_load_with_urn_uuid_references_resolved() {
    let db = TestDb::new().await;
    let file = temp_dir().join("bundle.json");
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "id": "11111111-1111-1111-1111-111111111111"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Encounter"}}
    ]});
    std::fs::write(&file, bundle.to_string()).expect("write");
    let report = shared::load::load_paths(&db.pool, &[file], |_| {})
        .await
        .expect("load");
    assert_eq!(report.loaded, 2);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM compartment WHERE patient_id = '11111111-1111-1111-1111-111111111111' AND resource_type = 'Encounter'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_cli_migrates_loads_with_progress_and_exits_2_on_rejected_lines() {
    let db = TestDb::new().await; // already migrated: migrate must be a no-op
    let bin = bulk_export_bin();
    let out = Command::new(&bin)
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "database is up to date"
    );

    let dir = temp_dir();
    integration_tests::data::generate(&dir, 3);
    let generated = integration_tests::data::DataSet::from_dir(dir.clone())
        .resources
        .len();
    std::fs::write(
        dir.join("Broken.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"x\"}\n{oops\n",
    )
    .expect("w");
    // A check needs no database, stores nothing, and reports what a load would.
    let checked = Command::new(&bin)
        .args(["load", "--check", dir.to_str().expect("utf8")])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert_eq!(checked.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        stdout.starts_with(&format!("checked {} resources from ", generated + 1)),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("; 0 would be deleted; 1 rejected"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("Broken.ndjson:2: invalid JSON"),
        "{checked:?}"
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM resources").await, 0);
    // More writers than this machine has cores, and a pool smaller than they need: the pool
    // grows to them.
    let out = Command::new(&bin)
        .args(["load", "--writers", "5", dir.to_str().expect("utf8")])
        .env("DATABASE_URL", &db.url)
        .env("DATABASE_POOL_SIZE", "2")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loaded "), "progress shown: {stderr}");
    assert!(stderr.contains("Broken.ndjson:2: invalid JSON"), "{stderr}");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM resources").await as usize,
        generated + 1,
        "every good line loaded (the generated set and Broken.ndjson:1)"
    );

    let deleted = Command::new(&bin)
        .args(["delete", "Patient/x", "Patient/pat-0"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(deleted.status.success());
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout).trim(),
        "deleted 2 of 2 resources"
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM resources WHERE deleted").await,
        2
    );
    let bad = Command::new(&bin)
        .args(["delete", "Patient/../../x"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not Type/id"));

    let fresh = format!("bulkt_cli_{}", uuid::Uuid::new_v4().simple());
    let admin = integration_tests::admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {fresh}"))
        .await
        .expect("create");
    let url = format!("{}/{fresh}", admin.rsplit_once('/').expect("url").0);
    let refused = Command::new(&bin)
        .args(["load", "/nonexistent"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bulk-export migrate"));
    let migrated = Command::new(&bin)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("0001_initial"));
}

/// Blocks of a large file are parsed at the same time, yet stored in the file's order: a
/// resource given again further down keeps its later line, and line numbers stay the file's.
#[tokio::test]
async fn a_file_of_many_blocks_keeps_its_order_and_line_numbers() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let filler = "x".repeat(400);
    let mut text = String::from(r#"{"resourceType":"Basic","id":"dup","text":{"div":"first"}}"#);
    text.push('\n');
    // About 14 MB: four blocks of 4 MiB, parsed at once on this machine's cores.
    let count = 33_000;
    for n in 0..count {
        text.push_str(&format!(
            r#"{{"resourceType":"Basic","id":"b{n}","text":{{"div":"{filler}"}}}}"#
        ));
        text.push('\n');
    }
    text.push_str("{oops\n");
    text.push_str(r#"{"resourceType":"Basic","id":"dup","text":{"div":"last"}}"#);
    text.push('\n');
    std::fs::write(dir.join("Basic.ndjson"), &text).expect("w");
    assert!(text.len() > 3 * (4 << 20), "more than three blocks");
    let report = shared::load::load_paths(&db.pool, &[dir], |_| {})
        .await
        .expect("load");
    assert_eq!(report.loaded as usize, count + 2);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(
        report.rejected[0].line,
        count + 2,
        "the file's own line number"
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM resources").await as usize,
        count + 1
    );
    let client = db.pool.get().await.expect("client");
    let row = client
        .query_one(
            "SELECT resource, version_id FROM resources WHERE resource_type = 'Basic' AND id = 'dup'",
            &[],
        )
        .await
        .expect("dup");
    let resource: String = row.get(0);
    assert!(resource.contains(r#""div":"last""#), "{resource}");
    assert_eq!(
        row.get::<_, i64>(1),
        2,
        "the first line is its prior version"
    );
}

/// What the loader refuses, the database refuses too (a row written around the loader): a
/// resource on more than one line would break the ndjson framing of every export, and one whose
/// JSON id or type differs from its key would put a duplicate id in one.
#[tokio::test]
async fn the_database_refuses_multi_line_rows_and_ids_that_differ_from_their_key() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("conn");
    let insert = |id: &'static str, text: &'static str| {
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO resources (resource_type, id, version_id, last_updated, resource)
                     VALUES ('Patient', $1, 1, now(), $2)",
                    &[&id, &text],
                )
                .await
        }
    };
    assert!(insert("p1", "{\"resourceType\":\"Patient\",\"id\":\"p1\"}")
        .await
        .is_ok());
    // resourceType and id first (the check compares a prefix), or in any other order (the
    // check reads the JSON).
    assert!(insert(
        "p6",
        "{\"resourceType\":\"Patient\",\"id\":\"p6\",\"active\":true}"
    )
    .await
    .is_ok());
    assert!(insert(
        "p7",
        "{\"active\":true,\"id\":\"p7\",\"resourceType\":\"Patient\"}"
    )
    .await
    .is_ok());
    // Text that begins like a resource but is not JSON is refused too.
    let err = insert("p8", "{\"resourceType\":\"Patient\",\"id\":\"p8\",oops")
        .await
        .expect_err("invalid JSON after a matching prefix");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION),
        "{err}"
    );
    for (id, text, constraint) in [
        (
            "p2",
            "{\"resourceType\":\"Patient\",\n\"id\":\"p2\"}",
            "resources_one_line",
        ),
        (
            "p3",
            "{\"resourceType\":\"Patient\",\"id\":\"p1\"}",
            "resources_key_matches_json",
        ),
        (
            "p4",
            "{\"resourceType\":\"Observation\",\"id\":\"p4\"}",
            "resources_key_matches_json",
        ),
        (
            "p5",
            "{\"resourceType\":\"Patient\"}",
            "resources_key_matches_json",
        ),
        // An id that the key is a prefix of, first or later in the object.
        (
            "p1",
            "{\"resourceType\":\"Patient\",\"id\":\"p10\",\"active\":true}",
            "resources_key_matches_json",
        ),
        (
            "p9",
            "{\"active\":true,\"resourceType\":\"Patient\",\"id\":\"p90\"}",
            "resources_key_matches_json",
        ),
        (
            "p9",
            "{\"id\":\"p9\",\"resourceType\":\"Group\"}",
            "resources_key_matches_json",
        ),
    ] {
        let err = insert(id, text).await.expect_err(id);
        assert_eq!(
            err.as_db_error().and_then(|e| e.constraint()),
            Some(constraint),
            "{id}: {err}"
        );
    }
}

/// A resource's compartment patients are stored on its row and its references' row with each
/// version (a first load by COPY, a reload by upsert), as its `compartment` rows are; a
/// resource in no compartment has none, and a deleted one keeps its last.
#[tokio::test]
async fn a_resources_patients_follow_its_versions() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let (v1, v2) = (dir.join("v1.ndjson"), dir.join("v2.ndjson"));
    let obs = |subject: &str, performer: Option<&str>| {
        let mut o = serde_json::json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/{subject}")}});
        if let Some(p) = performer {
            o["performer"] = serde_json::json!([{"reference": format!("Patient/{p}")}]);
        }
        o.to_string()
    };
    std::fs::write(
        &v1,
        format!(
            "{}\n{{\"resourceType\":\"Organization\",\"id\":\"org\"}}\n",
            obs("p2", Some("p1"))
        ),
    )
    .expect("w");
    std::fs::write(&v2, format!("{}\n", obs("p3", None))).expect("w");
    let client = db.pool.get().await.expect("conn");
    let stored = |id: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT r.patients, f.patients,
                            (SELECT array_agg(c.patient_id ORDER BY c.patient_id) FROM compartment c
                             WHERE c.resource_type = r.resource_type AND c.resource_id = r.id)
                     FROM resources r
                     LEFT JOIN resource_refs f ON f.source_type = r.resource_type AND f.source_id = r.id
                     WHERE r.id = $1",
                    &[&id],
                )
                .await
                .expect("q");
            (
                row.get::<_, Option<Vec<String>>>(0),
                row.get::<_, Option<Vec<String>>>(1),
                row.get::<_, Option<Vec<String>>>(2),
            )
        }
    };
    let some = |ids: &[&str]| Some(ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    shared::load::load_paths(&db.pool, &[v1], |_| {})
        .await
        .expect("load");
    assert_eq!(
        stored("o").await,
        (
            some(&["p1", "p2"]),
            some(&["p1", "p2"]),
            some(&["p1", "p2"])
        )
    );
    assert_eq!(stored("org").await, (None, None, None));
    shared::load::load_paths(&db.pool, &[v2], |_| {})
        .await
        .expect("load");
    assert_eq!(
        stored("o").await,
        (some(&["p3"]), some(&["p3"]), some(&["p3"]))
    );
    shared::db::resources::delete_resources(&db.pool, &[("Observation".into(), "o".into())])
        .await
        .expect("delete");
    assert_eq!(
        stored("o").await,
        (some(&["p3"]), some(&["p3"]), some(&["p3"]))
    );
}

/// Applies (and records) every migration before `name`, as a database of an older version has
/// them.
async fn migrate_before(pool: &Pool, name: &str) {
    let mut client = pool.get().await.expect("conn");
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (
                 name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .expect("table");
    for (applied, sql) in shared::db::MIGRATIONS
        .iter()
        .take_while(|(n, _)| *n != name)
    {
        let tx = client.transaction().await.expect("tx");
        tx.batch_execute(sql).await.expect(applied);
        tx.execute(
            "INSERT INTO schema_migrations (name) VALUES ($1)",
            &[applied],
        )
        .await
        .expect("record");
        tx.commit().await.expect("commit");
    }
}

/// A database loaded before migration 0014 gets each resource's compartment patients from its
/// `compartment` rows, on the resource's row and on its references' row, when it is upgraded.
#[tokio::test]
async fn upgrading_a_loaded_database_fills_in_the_patients() {
    let db = TestDb::empty().await;
    migrate_before(&db.pool, "0014_compartment_scan").await;
    let client = db.pool.get().await.expect("conn");
    // What the loader of 0013 stored: an Observation in two compartments, an Organization in
    // none.
    client
        .batch_execute(
            r#"INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, resource) VALUES
                 ('Observation', 'o', 1, now(), false, '{"resourceType":"Observation","id":"o"}'),
                 ('Organization', 'org', 1, now(), false, '{"resourceType":"Organization","id":"org"}');
               INSERT INTO compartment (patient_id, resource_type, resource_id) VALUES
                 ('p2', 'Observation', 'o'), ('p1', 'Observation', 'o');
               INSERT INTO resource_refs (source_type, source_id, target_types, target_ids) VALUES
                 ('Observation', 'o', '{Patient,Patient}', '{p1,p2}'),
                 ('Organization', 'org', '{Organization}', '{parent}');"#,
        )
        .await
        .expect("rows of 0013");
    drop(client);
    let applied = shared::db::migrate(&db.pool).await.expect("migrate");
    assert!(applied.contains(&"0014_compartment_scan"), "{applied:?}");
    let client = db.pool.get().await.expect("conn");
    let rows = client
        .query(
            "SELECT r.id, r.patients, f.patients FROM resources r
             JOIN resource_refs f ON f.source_type = r.resource_type AND f.source_id = r.id
             ORDER BY r.id",
            &[],
        )
        .await
        .expect("q");
    type Patients = Option<Vec<String>>;
    let got: Vec<(String, Patients, Patients)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let both = Some(vec!["p1".to_string(), "p2".to_string()]);
    assert_eq!(
        got,
        vec![
            ("o".to_string(), both.clone(), both),
            ("org".to_string(), None, None)
        ]
    );
}

/// Migration 0015 gives every key column the "C" collation (ids compare by their bytes, as the
/// exporter cuts its key ranges), and fails a planned export that was running when it was
/// applied (its ranges were cut in the old order) while a job not yet planned waits on.
#[tokio::test]
async fn upgrading_to_bytewise_keys_fails_running_exports_and_keeps_the_rest() {
    let db = TestDb::empty().await;
    migrate_before(&db.pool, "0015_bytewise_keys").await;
    let client = db.pool.get().await.expect("conn");
    client
        .batch_execute(
            r#"INSERT INTO export_jobs (id, level, params, request_url, transaction_time, status, planned) VALUES
                 ('00000000-0000-0000-0000-000000000001', 'system', '{}', 'http://x/$export', now(), 'Active', true),
                 ('00000000-0000-0000-0000-000000000002', 'system', '{}', 'http://x/$export', now(), 'Queued', false),
                 ('00000000-0000-0000-0000-000000000003', 'system', '{}', 'http://x/$export', now(), 'Complete', true);
               INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, resource) VALUES
                 ('Basic', 'ab', 1, now(), false, '{"resourceType":"Basic","id":"ab"}'),
                 ('Basic', 'a-c', 1, now(), false, '{"resourceType":"Basic","id":"a-c"}'),
                 ('Basic', 'B', 1, now(), false, '{"resourceType":"Basic","id":"B"}');"#,
        )
        .await
        .expect("rows of 0014");
    drop(client);
    let applied = shared::db::migrate(&db.pool).await.expect("migrate");
    assert!(applied.contains(&"0015_bytewise_keys"), "{applied:?}");
    let client = db.pool.get().await.expect("conn");

    let jobs: Vec<(String, Option<String>)> = client
        .query(
            "SELECT status, public_error FROM export_jobs ORDER BY id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        jobs,
        vec![
            (
                "Failed".to_string(),
                Some(
                    "The server was upgraded while this export ran; start the export again."
                        .to_string()
                )
            ),
            ("Queued".to_string(), None),
            ("Complete".to_string(), None),
        ]
    );

    // Every column that holds a resource type, a resource id or a patient id compares by bytes:
    // a later migration that adds one with the database's collation fails here.
    let keys: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT table_name::text, column_name::text, collation_name::text
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND data_type IN ('text', 'ARRAY')
               AND column_name ~ '(^id$|_id$|_ids$|_type$|_types$|^patients$)'
               AND column_name NOT IN ('client_id')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(keys.len() >= 25, "{keys:?}");
    let not_bytewise: Vec<_> = keys
        .iter()
        .filter(|(_, _, c)| c.as_deref() != Some("C"))
        .collect();
    assert!(not_bytewise.is_empty(), "{not_bytewise:?}");

    let ids: Vec<String> = client
        .query("SELECT id FROM resources ORDER BY id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut by_bytes = ids.clone();
    by_bytes.sort();
    assert_eq!(ids, by_bytes);
    assert_eq!(ids, vec!["B", "a-c", "ab"]);
}

/// Rows stored before the key check existed were never checked (migrations 0010 and 0013 added
/// it NOT VALID). `bulk-export check` lists each row whose text is not a JSON resource with its
/// key's resourceType and id (exit status 2, nothing changed) and, once none is left,
/// validates the check so that it holds for every stored row.
#[tokio::test]
async fn check_lists_rows_stored_before_the_key_check_and_then_validates_it() {
    let db = TestDb::empty().await;
    migrate_before(&db.pool, "0010_cheaper_loads").await;
    let client = db.pool.get().await.expect("conn");
    // What 0008's check let through: a member missing compared as NULL.
    client
        .batch_execute(
            r#"INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, resource) VALUES
                 ('Basic', 'good', 1, now(), false, '{"resourceType":"Basic","id":"good"}'),
                 ('Basic', 'no-id', 1, now(), false, '{"resourceType":"Basic"}'),
                 ('Basic', 'no-type', 1, now(), false, '{"id":"no-type"}');"#,
        )
        .await
        .expect("rows of 0009");
    drop(client);
    shared::db::migrate(&db.pool).await.expect("migrate");
    let client = db.pool.get().await.expect("conn");
    // Text that is not JSON at all, stored past the check as an older server could have.
    let def: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'resources'::regclass AND conname = 'resources_key_matches_json'",
            &[],
        )
        .await
        .expect("def")
        .get(0);
    assert!(def.ends_with("NOT VALID"), "{def}");
    client
        .batch_execute(&format!(
            "ALTER TABLE resources DROP CONSTRAINT resources_key_matches_json;
             INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, resource)
             VALUES ('Basic', 'oops', 1, now(), false, '{{oops');
             ALTER TABLE resources ADD CONSTRAINT resources_key_matches_json {def};"
        ))
        .await
        .expect("poison");
    let validated = || async {
        let client = db.pool.get().await.expect("conn");
        let v: bool = client
            .query_one(
                "SELECT convalidated FROM pg_constraint
                 WHERE conrelid = 'resources'::regclass AND conname = 'resources_key_matches_json'",
                &[],
            )
            .await
            .expect("q")
            .get(0);
        v
    };
    assert!(!validated().await);

    let check_with = |args: &[&str]| {
        Command::new(bulk_export_bin())
            .arg("check")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run")
    };
    let check = || check_with(&[]);
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "Basic/no-id: not a JSON resource with this resourceType and id",
            "Basic/no-type: not a JSON resource with this resourceType and id",
            "Basic/oops: not a JSON resource with this resourceType and id",
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("3 stored row(s) fail the key check"),
        "{stderr}"
    );
    assert!(!validated().await);

    // The operator's repair: a correct version of one; `check --repair` removes the others,
    // with their compartment and reference rows.
    client
        .batch_execute(
            r#"UPDATE resources SET resource = '{"resourceType":"Basic","id":"no-id"}' WHERE id = 'no-id';
               INSERT INTO compartment (patient_id, resource_type, resource_id)
                   VALUES ('p1', 'Basic', 'oops');"#,
        )
        .await
        .expect("repair");
    let out = check_with(&["--repair"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "Basic/no-type: removed (not a JSON resource with this resourceType and id)",
            "Basic/oops: removed (not a JSON resource with this resourceType and id)",
            "removed 2 row(s); every stored resource now has its key's resourceType and id",
        ]
    );
    assert!(validated().await);
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM resources").await, 2);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM compartment WHERE resource_id = 'oops'"
        )
        .await,
        0
    );
    // Afterwards a plain check passes.
    assert!(check().status.success());
}
