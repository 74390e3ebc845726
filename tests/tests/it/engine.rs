//! The exporter engine against real Postgres: file splitting, exactness at transactionTime,
//! crash recovery without duplicates, deadline hand-off, lease reclaim, failures, error[] files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use integration_tests::{stored_resources, temp_dir, TestDb};
use shared::config::StoragePath;
use shared::db::jobs::{self, NewJob};
use shared::export::engine::Exporter;
use shared::export::{ExportLevel, ExportParams, Job, JobStatus};
use shared::queue::NoQueue;
use shared::storage::local::LocalStore;
use shared::storage::{Download, ObjectStore, ObjectWriter, StorageError, Written};
use shared::Config;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn cfg(db: &TestDb, extra: &[(&str, &str)]) -> Arc<Config> {
    integration_tests::config_with(db, extra)
}

fn exporter(db: &TestDb, store: Arc<dyn ObjectStore>, config: Arc<Config>) -> Exporter {
    let mut e = Exporter::new(db.pool.clone(), store, Arc::new(NoQueue), config);
    e.retry_backoff = Duration::ZERO;
    e
}

async fn new_job(
    db: &TestDb,
    level: ExportLevel,
    group: Option<&str>,
    types: Option<&[&str]>,
) -> Job {
    let params = ExportParams {
        types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
        since: None,
        output_format: Default::default(),
        ..Default::default()
    };
    insert(db, level, group, &params, "http://test/$export").await
}

async fn insert(
    db: &TestDb,
    level: ExportLevel,
    group: Option<&str>,
    params: &ExportParams,
    request_url: &str,
) -> Job {
    jobs::insert_job(
        &db.pool,
        NewJob {
            level,
            group_id: group,
            params,
            request_url,
            client_id: None,
        },
        NO_LIMITS,
    )
    .await
    .expect("insert job")
    .expect("within limits")
}

const NO_LIMITS: jobs::JobLimits = jobs::JobLimits {
    running: i64::MAX,
    stored: i64::MAX,
};

async fn status(db: &TestDb, id: uuid::Uuid) -> Job {
    jobs::get_job(&db.pool, id).await.expect("db").expect("job")
}

fn counts(rows: &[(String, serde_json::Value)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, _) in rows {
        *m.entry(t.clone()).or_default() += 1;
    }
    m
}

fn assert_no_duplicates(rows: &[(String, serde_json::Value)]) {
    let mut seen = BTreeSet::new();
    for (t, r) in rows {
        assert!(
            seen.insert((t.clone(), r["id"].as_str().expect("id").to_string())),
            "duplicate {t}/{}",
            r["id"]
        );
    }
}

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

/// Wraps a store and fails chosen `finish` calls, or slows every `finish` down.
struct FlakyStore {
    inner: Arc<dyn ObjectStore>,
    finishes: Arc<AtomicUsize>,
    fail_on: Vec<usize>,
    fail_always: bool,
    delay: Duration,
}

struct FlakyWriter {
    inner: Box<dyn ObjectWriter>,
    finishes: Arc<AtomicUsize>,
    fail_on: Vec<usize>,
    fail_always: bool,
    delay: Duration,
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(FlakyWriter {
            inner: self.inner.writer(key).await?,
            finishes: self.finishes.clone(),
            fail_on: self.fail_on.clone(),
            fail_always: self.fail_always,
            delay: self.delay,
        }))
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn download(&self, key: &str, ttl: Duration) -> Result<Download, StorageError> {
        self.inner.download(key, ttl).await
    }
    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.read(key).await
    }
}

#[async_trait]
impl ObjectWriter for FlakyWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.inner.write(data).await
    }
    async fn finish(self: Box<Self>) -> Result<Written, StorageError> {
        tokio::time::sleep(self.delay).await;
        let n = self.finishes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_always || self.fail_on.contains(&n) {
            self.inner.abort().await?;
            return Err(StorageError::S3 {
                operation: "CompleteMultipartUpload",
                key: "test".into(),
                source: "injected failure".into(),
            });
        }
        self.inner.finish().await
    }
    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        self.inner.abort().await
    }
}

fn flaky(fail_on: Vec<usize>, fail_always: bool, delay: Duration) -> Arc<FlakyStore> {
    Arc::new(FlakyStore {
        inner: Arc::new(LocalStore::new(temp_dir()).expect("store")),
        finishes: Arc::new(AtomicUsize::new(0)),
        fail_on,
        fail_always,
        delay,
    })
}

#[tokio::test]
async fn a_failed_attempt_resumes_from_its_checkpoint_without_duplicates() {
    let (db, data) = TestDb::with_generated(20).await;
    let store = flaky(vec![4], false, Duration::ZERO);
    let config = cfg(&db, &[("MAX_FILE_BYTES", "15000")]);
    let job = new_job(&db, ExportLevel::System, None, None).await;
    let ex = exporter(&db, store.clone(), config);

    let first = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(
        first.retrying,
        vec![job.id],
        "the 4th file failed; the job is retried"
    );
    let failed_once = status(&db, job.id).await;
    assert_eq!(failed_once.status, JobStatus::Active);
    assert_eq!(failed_once.attempts, 1, "the failure counts");
    let second = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(second.completed, vec![job.id]);
    let done = status(&db, job.id).await;
    assert_eq!(done.status, JobStatus::Complete);
    assert_eq!(
        done.attempts, 0,
        "the retry made progress: attempts start over"
    );

    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    assert_eq!(counts(&rows), data.count_by_type());
    assert_no_duplicates(&rows);
}

#[tokio::test]
async fn a_job_that_keeps_failing_becomes_failed_and_its_status_is_500() {
    let (db, _data) = TestDb::with_generated(3).await;
    let store = flaky(vec![], true, Duration::ZERO);
    let config = cfg(
        &db,
        &[
            ("MAX_ATTEMPTS", "2"),
            ("PUBLIC_BASE_URL", "http://h"),
            ("AUTH", "off"),
        ],
    );
    let job = new_job(&db, ExportLevel::System, None, None).await;
    let ex = exporter(&db, store.clone(), config.clone());
    for _ in 0..3 {
        ex.run_until_idle(None, far()).await.expect("run");
    }
    let failed = status(&db, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(failed
        .error
        .as_deref()
        .is_some_and(|e| e.contains("injected failure")));

    let state = shared::app::AppState {
        pool: db.pool.clone(),
        store,
        queue: Arc::new(NoQueue),
        config,
    };
    let req = http::Request::get(format!("http://h/$exportstatus?_id={}", job.id))
        .body(bytes::Bytes::new())
        .expect("request");
    let resp = shared::http::router::handle(&state, req).await;
    assert_eq!(resp.status(), 500);
    let shared::http::Body::Full(body) = resp.into_body() else {
        panic!("body")
    };
    let oo: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "exception");
    // The client is told what kind of failure, never the internal text (operators have it).
    let said = oo["issue"][0]["diagnostics"].as_str().expect("diagnostics");
    assert!(said.contains("writing the export files failed"), "{said}");
    assert!(!said.contains("injected failure"), "{said}");
}

#[tokio::test]
async fn near_the_deadline_progress_is_saved_and_the_job_handed_off() {
    let (db, data) = TestDb::with_generated(20).await;
    let store = flaky(vec![], false, Duration::from_millis(300));
    let config = cfg(&db, &[("MAX_FILE_BYTES", "15000")]);
    let job = new_job(&db, ExportLevel::System, None, Some(&["Observation"])).await;
    let ex = exporter(&db, store.clone(), config);

    let first = ex
        .run_until_idle(None, Instant::now() + Duration::from_millis(500))
        .await
        .expect("run");
    assert_eq!(first.handed_off, vec![job.id]);
    let mid = status(&db, job.id).await;
    assert_eq!(mid.status, JobStatus::Active);
    let files_before = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files")
        .len();
    assert!(files_before >= 1, "finished files are kept");

    let second = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(second.completed, vec![job.id]);
    assert_eq!(
        status(&db, job.id).await.attempts,
        0,
        "a hand-off is not a failed attempt"
    );
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    assert_eq!(rows.len(), data.count_by_type()["Observation"]);
    assert_no_duplicates(&rows);
}

#[tokio::test]
async fn a_job_whose_exporter_vanished_is_reclaimed_after_its_lease() {
    let (db, _data) = TestDb::with_generated(3).await;
    let job = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;
    // Another exporter claims the job and dies without a word.
    let claimed = jobs::claim_job(&db.pool, "crashed", Duration::from_secs(2), None)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.status, JobStatus::Active);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let ex = exporter(&db, store, cfg(&db, &[]));
    let early = ex.run_until_idle(None, far()).await.expect("run");
    assert!(early.completed.is_empty(), "the lease is still held");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The reclaim counts as an attempt (the previous owner vanished)...
    let reclaimed = jobs::claim_job(&db.pool, "second", Duration::from_secs(2), None)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(reclaimed.attempts, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(later.completed, vec![job.id]);
    // ... and the export that then made progress starts its count over.
    assert_eq!(status(&db, job.id).await.attempts, 0);
}

/// A reference to a resource that does not exist is reported in error[] (and the export still
/// completes), at Patient level (references joined per item) and Group level (references
/// written at planning, `export_job_refs`) alike.
#[tokio::test]
async fn missing_referenced_resources_are_reported_in_error_files() {
    for level in [ExportLevel::Patient, ExportLevel::Group] {
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
        let job = new_job(&db, level, group, None).await;
        let summary = exporter(&db, store.clone(), cfg(&db, &[]))
            .run_until_idle(None, far())
            .await
            .expect("run");
        assert_eq!(
            summary.completed,
            vec![job.id],
            "{level:?}: the export still completes"
        );
        let files = shared::db::files::select_files(&db.pool, job.id)
            .await
            .expect("files");
        let errors: Vec<_> = files
            .iter()
            .filter(|f| f.kind == shared::export::manifest::FileKind::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{level:?}");
        assert_eq!(errors[0].resource_count, 1, "{level:?}");
        let text = String::from_utf8(store.read(&errors[0].object_key).await.expect("read"))
            .expect("utf8");
        let oo: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(
            oo["issue"][0]["diagnostics"]
                .as_str()
                .expect("diag")
                .contains("Encounter/enc-dangling references Organization/gone"),
            "{level:?}: {oo}"
        );
        // The job's references were written at planning only for the Group.
        let planned: i64 = db
            .pool
            .get()
            .await
            .expect("conn")
            .query_one(
                "SELECT count(*) FROM export_job_refs WHERE job_id = $1",
                &[&job.id],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            planned > 0,
            level == ExportLevel::Group,
            "{level:?}: {planned}"
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

/// Regression: a status poll in flight (its transaction still open) must not hide the job from
/// an exporter's claim. It used to update the job row, and the claim's `FOR UPDATE SKIP LOCKED`
/// then skipped the job until the next RepeatPeriod.
#[tokio::test]
async fn a_status_poll_in_flight_does_not_hide_the_job_from_the_claim() {
    let (db, _data) = TestDb::with_generated(2).await;
    let job = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;
    let mut conn = db.pool.get().await.expect("conn");
    let tx = conn.transaction().await.expect("tx");
    assert!(
        shared::db::polls::record_poll_with(&tx, job.id, Duration::ZERO)
            .await
            .expect("poll"),
        "the first poll is recorded"
    );
    // The poll's transaction holds its locks while the exporter claims.
    let claimed = jobs::claim_job(&db.pool, "exporter-test", Duration::from_secs(30), None)
        .await
        .expect("claim");
    assert_eq!(claimed.map(|j| j.id), Some(job.id));
    tx.rollback().await.expect("rollback");
}

/// organizeOutputBy=Patient: a file that fails to finish, then a deadline hand-off, and the
/// blocks still come out whole, each patient once, each block exactly what the data says.
#[tokio::test]
async fn blocks_by_patient_resume_after_a_failure_and_a_hand_off_without_duplicates() {
    let (db, data) = TestDb::with_generated(20).await;
    let store = flaky(vec![2], false, Duration::from_millis(150));
    let config = cfg(&db, &[("MAX_FILE_BYTES", "15000")]);
    let params = ExportParams {
        output_format: Default::default(),
        organize_output_by: Some(shared::export::params::OrganizeBy::Patient),
        ..Default::default()
    };
    let job = insert(
        &db,
        ExportLevel::Patient,
        None,
        &params,
        "http://test/Patient/$export?organizeOutputBy=Patient",
    )
    .await;
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
    let params = ExportParams {
        output_format: Default::default(),
        organize_output_by: Some(shared::export::params::OrganizeBy::Patient),
        ..Default::default()
    };
    let job = insert(
        &db,
        ExportLevel::Patient,
        None,
        &params,
        "http://test/Patient/$export?organizeOutputBy=Patient",
    )
    .await;
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

/// Attempts count failures without progress: a long export whose files sometimes fail to
/// finish, but which checkpoints a file between failures, completes even with MAX_ATTEMPTS=2.
#[tokio::test]
async fn attempts_reset_when_an_export_makes_progress() {
    let (db, data) = TestDb::with_generated(20).await;
    let store = flaky(vec![2, 4], false, Duration::ZERO);
    let config = cfg(&db, &[("MAX_FILE_BYTES", "15000"), ("MAX_ATTEMPTS", "2")]);
    let job = new_job(&db, ExportLevel::System, None, None).await;
    let ex = exporter(&db, store.clone(), config);
    for _ in 0..4 {
        ex.run_until_idle(None, far()).await.expect("run");
    }
    let done = status(&db, job.id).await;
    assert_eq!(done.status, JobStatus::Complete, "{:?}", done.error);
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    assert_eq!(counts(&rows), data.count_by_type());
    assert_no_duplicates(&rows);
}

/// A restarted exporter of the same name resumes the job it held at once, instead of waiting
/// for its own old lease to expire.
#[tokio::test]
async fn a_restarted_exporter_resumes_its_own_job_at_once() {
    let (db, data) = TestDb::with_generated(3).await;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let job = new_job(&db, ExportLevel::System, None, None).await;
    // The previous process claimed it (a 2-minute lease) and died.
    let claimed = jobs::claim_job(&db.pool, "serve@host:8080", Duration::from_secs(120), None)
        .await
        .expect("claim");
    assert_eq!(claimed.map(|j| j.id), Some(job.id));
    let other = exporter(&db, store.clone(), cfg(&db, &[]));
    assert!(other
        .run_until_idle(None, far())
        .await
        .expect("run")
        .completed
        .is_empty());
    let restarted = exporter(&db, store.clone(), cfg(&db, &[])).with_owner("serve@host:8080");
    let summary = restarted.run_until_idle(None, far()).await.expect("run");
    assert_eq!(summary.completed, vec![job.id]);
    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    assert_eq!(counts(&rows), data.count_by_type());
}

/// The lease is renewed by time, not by page progress: while one exporter waits on a slow
/// storage call longer than the lease, another cannot take the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_alive_while_a_storage_call_is_slow() {
    let (db, data) = TestDb::with_generated(2).await;
    let slow = flaky(vec![], false, Duration::from_secs(7));
    let config = cfg(&db, &[("LEASE_SECONDS", "5")]);
    let job = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;
    let first = exporter(&db, slow.clone(), config.clone());
    let running = tokio::spawn(async move { first.run_until_idle(None, far()).await });
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Past the 5 s lease, the first exporter is still inside finish() (7 s).
    let fast: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let second = exporter(&db, fast, config)
        .run_until_idle(None, far())
        .await
        .expect("run");
    assert!(second.completed.is_empty(), "the job was taken: {second:?}");
    let first = running.await.expect("task").expect("run");
    assert_eq!(first.completed, vec![job.id]);
    let rows = stored_resources(&db.pool, slow.as_ref(), job.id).await;
    assert_eq!(rows.len(), data.count_by_type()["Patient"]);
}

/// A Failed job's files expire like a Complete one's: it gets an expiry, and past it the files
/// are purged (a full disk of failed exports no longer blocks every later export).
#[tokio::test]
async fn failed_exports_expire_and_their_files_are_purged() {
    let (db, _data) = TestDb::with_generated(5).await;
    // The 2nd file fails, always: the first is written and kept, then the job fails.
    let store = flaky(vec![2, 3, 4, 5, 6], false, Duration::ZERO);
    let config = cfg(&db, &[("MAX_ATTEMPTS", "1"), ("MAX_FILE_BYTES", "4000")]);
    let job = new_job(&db, ExportLevel::System, None, None).await;
    let ex = exporter(&db, store.clone(), config);
    ex.run_until_idle(None, far()).await.expect("run");
    let failed = status(&db, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let expires = failed.expires_at.expect("a failed job expires");
    assert!(expires > chrono::Utc::now() + chrono::Duration::hours(23));
    let files = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files");
    let kept = files
        .first()
        .expect("the first file was written before the failure");
    assert!(store.read(&kept.object_key).await.is_ok());
    db.pool
        .get()
        .await
        .expect("conn")
        .execute(
            "UPDATE export_jobs SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&job.id],
        )
        .await
        .expect("expire");
    let summary = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(summary.purged, 1);
    assert!(matches!(
        store.read(&kept.object_key).await,
        Err(StorageError::NotFound { .. })
    ));
}
