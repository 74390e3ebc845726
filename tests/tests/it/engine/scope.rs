//! Patient and Group scope: members only, and references that point nowhere.

use super::*;

/// A reference to a resource that does not exist is reported in error[] (and the export still
/// completes), at Patient and Group level alike (references written at planning,
/// `export_job_refs`), with and without organizeOutputBy=Patient.
#[tokio::test]
async fn missing_referenced_resources_are_reported_in_error_files() {
    for (level, organized) in [
        (ExportLevel::Patient, false),
        (ExportLevel::Group, false),
        (ExportLevel::Patient, true),
        (ExportLevel::Group, true),
    ] {
        let (db, data) = TestDb::with_generated(4).await;
        let group = (level == ExportLevel::Group).then_some("group-even");
        let member = data.group_members().into_iter().next().expect("a member");
        let extra = temp_dir().join("dangling.ndjson");
        std::fs::write(
            &extra,
            format!(
                "{{\"resourceType\":\"Encounter\",\"id\":\"enc-dangling\",\"status\":\"finished\",\"class\":{{\"code\":\"AMB\"}},\
                  \"subject\":{{\"reference\":\"Patient/{member}\"}},\"serviceProvider\":{{\"reference\":\"Organization/gone\"}}}}\n"
            ),
        )
        .expect("write");
        shared::load::load_paths(&db.pool, &[extra], |_| {})
            .await
            .expect("load");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
        let params = ExportParams {
            organize_output_by: organized.then_some(shared::export::params::OrganizeBy::Patient),
            ..Default::default()
        };
        let job = insert(&db, level, group, &params, "http://test/$export").await;
        let level = format!("{level:?}, organized by patient: {organized}");
        let summary = exporter(&db, store.clone(), cfg(&db, &[]))
            .run_until_idle(None, far())
            .await
            .expect("run");
        assert_eq!(
            summary.completed,
            vec![job.id],
            "{level}: the export still completes"
        );
        let files = shared::db::files::select_files(&db.pool, job.id)
            .await
            .expect("files");
        let errors: Vec<_> = files
            .iter()
            .filter(|f| f.kind == shared::export::manifest::FileKind::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{level}");
        assert_eq!(errors[0].resource_count, 1, "{level}");
        let text = String::from_utf8(store.read(&errors[0].object_key).await.expect("read"))
            .expect("utf8");
        let oo: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(
            oo["issue"][0]["diagnostics"]
                .as_str()
                .expect("diag")
                .contains("Encounter/enc-dangling references Organization/gone"),
            "{level}: {oo}"
        );
        // The job's references were written at planning, at both levels: one row per
        // referenced resource that exists, every source of a reference to one that does not.
        let client = db.pool.get().await.expect("conn");
        let (rows, existing, distinct_existing, dangling): (i64, i64, i64, i64) = {
            let r = client
                .query_one(
                    "SELECT count(*),
                            count(*) FILTER (WHERE t.id IS NOT NULL),
                            count(DISTINCT (jr.target_type, jr.target_id)) FILTER (WHERE t.id IS NOT NULL),
                            count(*) FILTER (WHERE jr.target_type = 'Organization' AND jr.target_id = 'gone'
                                             AND jr.source_type = 'Encounter' AND jr.source_id = 'enc-dangling')
                     FROM export_job_refs jr
                     LEFT JOIN resources t ON t.resource_type = jr.target_type AND t.id = jr.target_id
                     WHERE jr.job_id = $1",
                    &[&job.id],
                )
                .await
                .expect("count");
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        assert!(existing > 0, "{level}: {rows} rows");
        assert_eq!(
            existing, distinct_existing,
            "{level}: one row per existing target"
        );
        assert_eq!(dangling, 1, "{level}");
        assert_eq!(
            rows,
            existing + 1,
            "{level}: only the dangling reference besides"
        );
    }
}

#[tokio::test]
async fn a_group_export_covers_only_members_and_never_other_groups() {
    let (db, data) = TestDb::with_generated(10).await;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let job = new_job(&db, ExportLevel::Group, Some("group-even"), None).await;
    exporter(&db, store.clone(), cfg(&db, &[]))
        .run_until_idle(None, far())
        .await
        .expect("run");
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    let members = data.group_members();
    assert_eq!(members.len(), 5);
    assert_eq!(counts(&rows), data.expected_compartment_export(&members));
    assert!(rows.iter().all(|(t, _)| t != "Group"));
    let patients: BTreeSet<&str> = rows
        .iter()
        .filter(|(t, _)| t == "Patient")
        .map(|(_, r)| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(patients, members.iter().map(String::as_str).collect());
    let _ = StoragePath::Local(temp_dir());
}
