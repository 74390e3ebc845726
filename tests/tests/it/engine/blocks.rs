//! organizeOutputBy=Patient: blocks resumed without duplicates, complete only when every file is recorded.

use super::*;

/// A Patient-level job with organizeOutputBy=Patient.
async fn insert_organized(db: &TestDb) -> Job {
    let params = ExportParams {
        organize_output_by: Some(shared::export::params::OrganizeBy::Patient),
        ..Default::default()
    };
    insert(
        db,
        ExportLevel::Patient,
        None,
        &params,
        "http://test/Patient/$export?organizeOutputBy=Patient",
    )
    .await
}

/// organizeOutputBy=Patient: a file that fails to finish, then a deadline hand-off, and the
/// blocks still come out whole, each patient once, each block exactly what the data says.
#[tokio::test]
async fn blocks_by_patient_resume_after_a_failure_and_a_hand_off_without_duplicates() {
    let (db, data) = TestDb::with_generated(20).await;
    let store = flaky(vec![2], false, Duration::from_millis(150));
    let config = cfg(&db, &[("MAX_FILE_BYTES", "15000")]);
    let job = insert_organized(&db).await;
    let ex = exporter(&db, store.clone(), config);

    let first = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(first.retrying, vec![job.id], "the 2nd file failed");
    let second = ex
        .run_until_idle(None, Instant::now() + Duration::from_millis(400))
        .await
        .expect("run");
    assert_eq!(second.handed_off, vec![job.id], "deadline: progress saved");
    // X-Progress counts the patients whose blocks are durably written (not "0 of N" until the
    // very end).
    match jobs::select_progress(&db.pool, job.id)
        .await
        .expect("progress")
    {
        jobs::JobProgress::Patients { done, all } => {
            assert_eq!(all, 20);
            assert!(done > 0 && done <= all, "{done} of {all}");
        }
        other => panic!("progress in patients, not {other:?}"),
    }
    let third = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(third.completed, vec![job.id]);

    let files = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files");
    assert!(files.len() > 3, "{} files", files.len());
    let mut blocks: Vec<(String, BTreeSet<(String, String)>)> = Vec::new();
    for f in files {
        let text = String::from_utf8(store.read(&f.object_key).await.expect("read")).expect("utf8");
        let mut resources = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if v["resourceType"] == "Parameters" {
                let patient = v["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Patient/"))
                    .expect("header")
                    .to_string();
                blocks.push((patient, BTreeSet::new()));
            } else {
                let (_, block) = blocks.last_mut().expect("a block is open");
                let key = (
                    v["resourceType"].as_str().expect("type").to_string(),
                    v["id"].as_str().expect("id").to_string(),
                );
                assert!(block.insert(key), "nothing twice within a block");
                resources += 1;
            }
        }
        assert_eq!(resources, f.resource_count, "{}: count", f.file_name);
    }
    let patients: Vec<String> = blocks.iter().map(|(p, _)| p.clone()).collect();
    let expected: Vec<String> = data.patient_ids().into_iter().collect();
    assert_eq!(patients, expected, "every patient once, in order");
    for (patient, block) in &blocks {
        assert_eq!(block, &data.expected_block(patient), "{patient}");
    }
}

/// organizeOutputBy=Patient finishes in one transaction: the last block file, the deleted[] and
/// error files and "every work item done" are recorded together. A crash at that step (here: the
/// error file's row fails once) leaves the job unfinished, and the retry completes it with every
/// file. (Before, the items were marked done first: the retry then completed the job without
/// the files of the failed step.) X-Progress counts patients.
#[tokio::test]
async fn an_organized_export_is_complete_only_with_every_file_recorded() {
    let (db, _data) = TestDb::with_generated(4).await;
    let extra = temp_dir().join("dangling.ndjson");
    std::fs::write(
        &extra,
        "{\"resourceType\":\"Encounter\",\"id\":\"enc-dangling\",\"status\":\"finished\",\"class\":{\"code\":\"AMB\"},\
          \"subject\":{\"reference\":\"Patient/pat-1\"},\"serviceProvider\":{\"reference\":\"Organization/gone\"}}\n",
    )
    .expect("write");
    shared::load::load_paths(&db.pool, &[extra], |_| {})
        .await
        .expect("load");
    db.pool
        .get()
        .await
        .expect("conn")
        .batch_execute(
            "CREATE SEQUENCE fail_once;
             CREATE FUNCTION fail_error_file() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.kind = 'error' AND nextval('fail_once') = 1 THEN
                 RAISE EXCEPTION 'injected crash at the last checkpoint';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER fail_error_file BEFORE INSERT ON export_files
               FOR EACH ROW EXECUTE FUNCTION fail_error_file();",
        )
        .await
        .expect("trigger");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let job = insert_organized(&db).await;
    let ex = exporter(&db, store.clone(), cfg(&db, &[]));

    let first = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(first.retrying, vec![job.id], "the last step failed");
    assert!(first.completed.is_empty());
    assert_eq!(status(&db, job.id).await.status, JobStatus::Active);
    // Progress is counted in patients, and only what is durable counts: nothing yet.
    assert_eq!(
        jobs::select_progress(&db.pool, job.id)
            .await
            .expect("progress"),
        jobs::JobProgress::Patients { done: 0, all: 4 }
    );

    let second = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(second.completed, vec![job.id]);
    let files = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files");
    let errors: Vec<_> = files
        .iter()
        .filter(|f| f.kind == shared::export::manifest::FileKind::Error)
        .collect();
    assert_eq!(errors.len(), 1, "the error file is in the manifest");
    assert_eq!(errors[0].resource_count, 1);
    assert!(files
        .iter()
        .any(|f| f.kind == shared::export::manifest::FileKind::Output && f.resource_count > 0));
}
