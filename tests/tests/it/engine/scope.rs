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

/// A job with most Patients reads its compartment types by scanning them (each resource's
/// `patients` against a hash of the job's), one with few through their `compartment` rows
/// (`EXPORT_SCAN_PERCENT` decides). Both export the same resources, byte for byte, at Patient
/// level, Group level and with `patient`: including a resource in two compartments whose first
/// patient is not the job's, and leaving out a deleted Patient's and a missing Patient's.
#[tokio::test]
async fn scanning_or_joining_the_compartment_exports_the_same_resources() {
    let (db, data) = TestDb::with_generated(10).await;
    let members = data.group_members();
    let others: BTreeSet<String> = data.patient_ids().difference(&members).cloned().collect();
    // `patients` is sorted: the outsider comes first, the member second.
    let (outsider, member) = others
        .iter()
        .find_map(|o| {
            members
                .iter()
                .find(|m| *m > o)
                .map(|m| (o.clone(), m.clone()))
        })
        .expect("a non-member sorted before a member");
    let deleted = members
        .iter()
        .find(|m| **m != member)
        .expect("another member")
        .clone();
    let extra = temp_dir().join("edges.ndjson");
    let observation = |id: &str, subject: &str, performer: Option<&str>| {
        let mut o = serde_json::json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "edge"}, "subject": {"reference": format!("Patient/{subject}")},
        });
        if let Some(p) = performer {
            o["performer"] = serde_json::json!([{"reference": format!("Patient/{p}")}]);
        }
        o.to_string()
    };
    std::fs::write(
        &extra,
        [
            observation("obs-shared", &outsider, Some(&member)),
            observation("obs-nobody", "nobody", None),
            observation("obs-deleted", &deleted, None),
        ]
        .join("\n")
            + "\n",
    )
    .expect("write");
    shared::load::load_paths(&db.pool, &[extra], |_| {})
        .await
        .expect("load");
    let gone = shared::db::resources::delete_resources(
        &db.pool,
        &[("Patient".to_string(), deleted.clone())],
    )
    .await
    .expect("delete");
    assert_eq!(gone, 1);

    let cases = [
        (ExportLevel::Patient, None::<&str>, None::<Vec<String>>),
        (ExportLevel::Group, Some("group-even"), None),
        (ExportLevel::Patient, None, Some(vec![member.clone()])),
    ];
    for (level, group, patients) in cases {
        let case = format!("{level:?} {group:?} {patients:?}");
        let mut outputs = Vec::new();
        // Scanned; joined (below the share); joined (more patients than a scan may hash).
        for (percent, max, scans) in [
            ("0", "2000000", true),
            ("101", "2000000", false),
            ("0", "0", false),
        ] {
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
            let params = ExportParams {
                patients: patients.clone(),
                ..Default::default()
            };
            let job = insert(&db, level, group, &params, "http://test/$export").await;
            exporter(
                &db,
                store.clone(),
                cfg(
                    &db,
                    &[
                        ("EXPORT_SCAN_PERCENT", percent),
                        ("EXPORT_SCAN_MAX_PATIENTS", max),
                    ],
                ),
            )
            .run_until_idle(None, far())
            .await
            .expect("run");
            let done = status(&db, job.id).await;
            assert_eq!(done.status, JobStatus::Complete, "{case}");
            assert_eq!(
                done.scan_patients.is_some(),
                scans,
                "{case}, {percent}%, max {max}"
            );
            let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
            assert_no_duplicates(&rows);
            let ids: BTreeSet<(String, String)> = rows
                .iter()
                .map(|(t, r)| (t.clone(), r["id"].as_str().expect("id").to_string()))
                .collect();
            let has = |t: &str, id: &str| ids.contains(&(t.to_string(), id.to_string()));
            assert!(
                has("Observation", "obs-shared"),
                "{case}, {percent}%, max {max}"
            );
            assert!(
                !has("Observation", "obs-nobody"),
                "{case}, {percent}%, max {max}"
            );
            assert!(
                !has("Observation", "obs-deleted"),
                "{case}, {percent}%, max {max}"
            );
            assert!(!has("Patient", &deleted), "{case}, {percent}%, max {max}");
            assert!(has("Patient", &member), "{case}, {percent}%, max {max}");
            assert_eq!(
                has("Patient", &outsider),
                level == ExportLevel::Patient && patients.is_none(),
                "{case}, {percent}%, max {max}"
            );
            let mut lines: Vec<String> = rows.iter().map(|(_, r)| r.to_string()).collect();
            lines.sort();
            outputs.push(lines);
        }
        assert!(!outputs[0].is_empty(), "{case}");
        assert_eq!(outputs[0], outputs[1], "{case}: scanned and joined differ");
        assert_eq!(outputs[0], outputs[2], "{case}: scanned and joined differ");
    }
}
