//! Failures, retries, hand-offs, leases and expiry.

use super::*;

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
async fn near_the_deadline_the_job_is_handed_off_and_the_next_run_finishes_it() {
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
    // Phase 0 reads in table order and is recorded only whole: the files the interrupted run
    // finished are in no manifest, and the next run writes them again under the same names.
    let files_before = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files")
        .len();
    assert_eq!(files_before, 0, "an interrupted phase 0 records nothing");
    let finished_before = store.finishes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        finished_before >= 1,
        "the interrupted run had finished files"
    );

    let second = ex.run_until_idle(None, far()).await.expect("run");
    assert_eq!(second.completed, vec![job.id]);
    assert_eq!(
        status(&db, job.id).await.attempts,
        0,
        "a hand-off is not a failed attempt"
    );
    let files = shared::db::files::select_files(&db.pool, job.id)
        .await
        .expect("files");
    assert!(files.len() > 1, "the 15 kB cap split the output");
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

/// Pauses the first `finish` until told to go on (an exporter stopped by SIGSTOP).
struct PausingStore {
    inner: Arc<dyn ObjectStore>,
    paused: Arc<tokio::sync::Notify>,
    resume: Arc<tokio::sync::Notify>,
    first: Arc<std::sync::atomic::AtomicBool>,
}

struct PausingWriter {
    inner: Box<dyn ObjectWriter>,
    pause: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
}

#[async_trait]
impl ObjectStore for PausingStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let pause = (!self.first.swap(true, Ordering::SeqCst))
            .then(|| (self.paused.clone(), self.resume.clone()));
        Ok(Box::new(PausingWriter {
            inner: self.inner.writer(key).await?,
            pause,
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
impl ObjectWriter for PausingWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.inner.write(data).await
    }
    async fn finish(self: Box<Self>) -> Result<Written, StorageError> {
        if let Some((paused, resume)) = &self.pause {
            paused.notify_one();
            resume.notified().await;
        }
        self.inner.finish().await
    }
    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        self.inner.abort().await
    }
}

/// An exporter stopped past its lease (SIGSTOP) while finishing a file resumes after another
/// exporter took its item and completed the job: its leftover file is the expected race, not a
/// failed attempt (no retry, no error), and the other's file is exact (issue 28 item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_that_resumes_after_its_job_completed_elsewhere_records_no_failure() {
    let (db, data) = TestDb::with_generated(3).await;
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let paused = Arc::new(tokio::sync::Notify::new());
    let resume = Arc::new(tokio::sync::Notify::new());
    let pausing: Arc<dyn ObjectStore> = Arc::new(PausingStore {
        inner: local.clone(),
        paused: paused.clone(),
        resume: resume.clone(),
        first: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    let config = cfg(&db, &[]);
    let job = new_job(&db, ExportLevel::System, None, Some(&["Patient"])).await;
    let stopped = exporter(&db, pausing, config.clone()).with_owner("stopped");
    let running = tokio::spawn(async move { stopped.run_until_idle(None, far()).await });
    tokio::time::timeout(Duration::from_secs(60), paused.notified())
        .await
        .expect("the first exporter reached finish()");
    // Its lease runs out while it is stopped; another exporter takes the item and completes.
    db.pool
        .get()
        .await
        .expect("conn")
        .execute(
            "UPDATE export_work_items SET lease_owner = NULL,
                    lease_expires_at = now() - interval '1 second'
             WHERE job_id = $1",
            &[&job.id],
        )
        .await
        .expect("expire the lease");
    let other = exporter(&db, local.clone(), config)
        .with_owner("other")
        .run_until_idle(None, far())
        .await
        .expect("run");
    assert_eq!(other.completed, vec![job.id]);
    resume.notify_one();
    let resumed = running.await.expect("task").expect("run");
    assert!(
        resumed.retrying.is_empty() && resumed.failed.is_empty(),
        "no failed attempt: {resumed:?}"
    );
    let done = status(&db, job.id).await;
    assert_eq!(done.status, JobStatus::Complete);
    assert_eq!(done.error, None);
    let rows = stored_resources(&db.pool, local.as_ref(), job.id).await;
    assert_eq!(rows.len(), data.count_by_type()["Patient"]);
    assert_no_duplicates(&rows);
}
