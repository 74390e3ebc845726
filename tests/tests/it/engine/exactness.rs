//! Files at the size cap, and the export exact at its transaction time while data changes.

use super::*;

#[tokio::test]
async fn files_are_split_at_the_size_cap_and_counts_add_up() {
    let (db, data) = TestDb::with_generated(30).await;
    let dir = temp_dir();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
    let config = cfg(&db, &[("MAX_FILE_BYTES", "20000")]);
    let job = new_job(&db, ExportLevel::System, None, None).await;
    let summary = exporter(&db, store.clone(), config)
        .run_until_idle(None, far())
        .await
        .expect("run");
    assert_eq!(summary.completed, vec![job.id]);

    let files = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files");
    let obs_files: Vec<_> = files
        .iter()
        .filter(|f| f.resource_type == "Observation")
        .collect();
    assert!(
        obs_files.len() > 3,
        "Observation split into {} files",
        obs_files.len()
    );
    for f in &files {
        assert!(
            f.byte_count <= 20000,
            "{} has {} bytes",
            f.file_name,
            f.byte_count
        );
    }
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    assert_eq!(counts(&rows), data.count_by_type());
    assert_no_duplicates(&rows);
}

#[tokio::test]
async fn an_export_is_exact_at_its_transaction_time_while_data_changes() {
    let (db, _data) = TestDb::with_generated(5).await;
    let dir = temp_dir();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.clone()).expect("store"));
    let job = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;

    // After the kick-off: pat-0 is updated and a new patient appears.
    let changes = temp_dir().join("changes.ndjson");
    std::fs::write(
        &changes,
        "{\"resourceType\":\"Patient\",\"id\":\"pat-0\",\"gender\":\"unknown\"}\n\
         {\"resourceType\":\"Patient\",\"id\":\"pat-new\"}\n",
    )
    .expect("write");
    let report = shared::load::load_paths(&db.pool, &[changes], |_| {})
        .await
        .expect("load");
    assert_eq!(report.loaded, 2);

    exporter(&db, store.clone(), cfg(&db, &[]))
        .run_until_idle(None, far())
        .await
        .expect("run");
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|(_, r)| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(!ids.contains("pat-new"), "created after transactionTime");
    let pat0 = rows
        .iter()
        .find(|(_, r)| r["id"] == "pat-0")
        .expect("pat-0")
        .1
        .clone();
    assert_eq!(
        pat0["gender"], "female",
        "the version current at transactionTime"
    );
    assert_eq!(pat0["meta"]["versionId"], "1");

    // A later export sees the new state.
    let job2 = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;
    exporter(&db, store.clone(), cfg(&db, &[]))
        .run_until_idle(None, far())
        .await
        .expect("run");
    let rows = stored_resources(&db.pool, store.as_ref(), job2.id).await;
    assert_eq!(rows.len(), 6);
    let pat0 = rows
        .iter()
        .find(|(_, r)| r["id"] == "pat-0")
        .expect("pat-0")
        .1
        .clone();
    assert_eq!(pat0["gender"], "unknown");
    assert_eq!(pat0["meta"]["versionId"], "2");
}
