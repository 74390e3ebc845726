//! An S3 or SQS endpoint that accepts connections and never answers costs a bounded wait: every
//! AWS client here is built with `shared::aws::AwsTimeouts` (connect, per attempt, per
//! operation). Before, a silent endpoint stalled a job for as long as it stayed silent.

use std::time::{Duration, Instant};

use shared::aws::AwsTimeouts;
use shared::queue::{JobQueue, SqsQueue};
use shared::storage::s3::S3Store;
use shared::storage::ObjectStore;

/// A TCP server that accepts every connection and never sends a byte.
async fn silent_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

async fn sdk_config(endpoint: &str, timeouts: AwsTimeouts) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .timeout_config(timeouts.config())
        .load()
        .await
}

const SHORT: AwsTimeouts = AwsTimeouts {
    connect: Duration::from_secs(1),
    attempt: Duration::from_secs(1),
    operation: Duration::from_secs(3),
};

#[tokio::test]
async fn a_silent_s3_or_sqs_endpoint_fails_within_the_timeouts() {
    let endpoint = silent_endpoint().await;
    let conf = sdk_config(&endpoint, SHORT).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let store = S3Store::new(s3, "bucket".into(), "exports".into());
    let started = Instant::now();
    assert!(store.read("job/Patient-0001.ndjson").await.is_err());
    let mut writer = store
        .writer("job/Patient-0001.ndjson")
        .await
        .expect("writer");
    writer.write(b"{}\n").await.expect("buffered");
    assert!(writer.finish().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&conf),
        format!("{endpoint}/000000000000/wake"),
    );
    let started = Instant::now();
    assert!(queue.send(uuid::Uuid::new_v4()).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_clients_built_from_the_environment_carry_the_timeouts() {
    let conf = shared::aws::shared_config().await;
    let t = conf.timeout_config().expect("timeouts configured");
    let default = AwsTimeouts::default();
    assert_eq!(t.connect_timeout(), Some(default.connect));
    assert_eq!(t.operation_attempt_timeout(), Some(default.attempt));
    assert_eq!(t.operation_timeout(), Some(default.operation));
}

// A hung S3 may not stall an export much past a lease once it answers again, nor fail it
// before STORAGE_OUTAGE_SECONDS.

mod overdue {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use integration_tests::lambda_rig::StallRelay;
    use integration_tests::{config_with, stored_resources, temp_dir, TestDb};
    use shared::aws::S3Timeouts;
    use shared::db::jobs;
    use shared::export::engine::Exporter;
    use shared::export::JobStatus;
    use shared::queue::NoQueue;
    use shared::storage::local::LocalStore;
    use shared::storage::s3::S3Store;
    use shared::storage::{Download, ObjectStore, ObjectWriter, StorageError, Written};
    use shared::Config;

    const LEASE: Duration = Duration::from_secs(5);

    async fn new_job(db: &TestDb) -> uuid::Uuid {
        crate::fanout::system_job(db).await.id
    }

    fn config(db: &TestDb) -> Arc<Config> {
        config_with(
            db,
            &[
                ("LEASE_SECONDS", "5"),
                ("MAX_FILE_BYTES", "15000"),
                ("MAX_ATTEMPTS", "100"),
            ],
        )
    }

    /// Runs `ex` until the job is no longer active (or the test ends).
    fn keep_exporting(ex: Exporter, db: &TestDb, job: uuid::Uuid) -> tokio::task::JoinHandle<()> {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            loop {
                let _ = ex
                    .run_until_idle(None, Instant::now() + Duration::from_secs(600))
                    .await;
                let status = jobs::get_job(&pool, job)
                    .await
                    .ok()
                    .flatten()
                    .map(|j| j.status);
                if !matches!(status, Some(JobStatus::Active | JobStatus::Queued)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn exporter(db: &TestDb, store: Arc<dyn ObjectStore>) -> Exporter {
        let mut ex = Exporter::new(db.pool.clone(), store, Arc::new(NoQueue), config(db));
        ex.retry_backoff = Duration::from_millis(200);
        ex
    }

    /// Waits (at most `limit`) for the job to be Complete; how long that took.
    async fn completed_within(db: &TestDb, job: uuid::Uuid, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let j = jobs::get_job(&db.pool, job)
                .await
                .expect("db")
                .expect("job");
            match j.status {
                JobStatus::Complete => return started.elapsed(),
                JobStatus::Failed => panic!("the export failed: {:?}", j.error),
                _ => {}
            }
            assert!(
                started.elapsed() < limit,
                "not complete {:?} after storage answered again (lease {LEASE:?}): {:?}",
                started.elapsed(),
                j.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_exact(rows: &[(String, serde_json::Value)], expected: BTreeMap<String, usize>) {
        let mut counts = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for (t, r) in rows {
            *counts.entry(t.clone()).or_insert(0usize) += 1;
            let id = r["id"].as_str().unwrap_or_default().to_string();
            assert!(keys.insert((t.clone(), id.clone())), "duplicate {t}/{id}");
        }
        assert_eq!(counts, expected);
    }

    /// S3 (moto) behind a relay that can hang, through a store whose requests time out fast:
    /// connect 1 s + first byte 1 s + body at 1 MiB/s an attempt, three attempts an operation
    /// (about 9 s).
    async fn hung_s3() -> (StallRelay, Arc<dyn ObjectStore>) {
        let (_, bucket) = integration_tests::new_bucket().await;
        let relay = StallRelay::start(&integration_tests::aws_endpoint()).await;
        let timeouts = S3Timeouts {
            connect: Duration::from_secs(1),
            first_byte: Duration::from_secs(1),
            min_upload_rate: 1024 * 1024,
        };
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&relay.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .timeout_config(timeouts.config(0))
            .load()
            .await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let store: Arc<dyn ObjectStore> =
            Arc::new(S3Store::new(client, bucket, "exports".into()).with_timeouts(timeouts));
        (relay, store)
    }

    /// S3 (moto behind a relay) accepts connections and answers nothing for 8 s, longer than
    /// an attempt's timeout; then it answers again. The export completes exactly, and well
    /// within three leases of S3 answering.
    #[tokio::test]
    async fn a_hung_s3_that_answers_again_delays_the_export_by_at_most_about_a_lease() {
        let (db, data) = TestDb::with_generated(20).await;
        let (relay, store) = hung_s3().await;
        let job = new_job(&db).await;

        relay.hang(true);
        let a = keep_exporting(exporter(&db, store.clone()), &db, job);
        let b = keep_exporting(exporter(&db, store.clone()), &db, job);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let during = jobs::get_job(&db.pool, job)
            .await
            .expect("db")
            .expect("job");
        assert_ne!(
            during.status,
            JobStatus::Complete,
            "nothing can be written while S3 hangs"
        );
        relay.hang(false);
        let recovered = completed_within(&db, job, LEASE * 3).await;
        eprintln!("complete {recovered:?} after S3 answered again");
        a.abort();
        b.abort();

        let rows = stored_resources(&db.pool, store.as_ref(), job).await;
        assert_exact(&rows, data.count_by_type());
    }

    /// An exporter with the default MAX_ATTEMPTS (3) and an outage limit of `outage`.
    fn default_exporter(db: &TestDb, store: Arc<dyn ObjectStore>, outage: &str) -> Exporter {
        let config = config_with(
            db,
            &[
                ("LEASE_SECONDS", "5"),
                ("MAX_FILE_BYTES", "15000"),
                ("STORAGE_OUTAGE_SECONDS", outage),
            ],
        );
        assert_eq!(config.max_attempts, 3);
        let mut ex = Exporter::new(db.pool.clone(), store, Arc::new(NoQueue), config);
        ex.retry_backoff = Duration::from_millis(200);
        ex
    }

    /// S3 hangs for 60 s: more than six times an operation's timeouts, so every attempt in that
    /// time fails, as the default 63 s operations do over an outage of minutes. Outage failures
    /// are not attempts: with the default MAX_ATTEMPTS the export waits, completes exactly once
    /// S3 answers, within about a lease, and no item counted an attempt.
    #[tokio::test]
    async fn an_s3_outage_of_a_minute_delays_the_export_without_using_up_its_attempts() {
        let (db, data) = TestDb::with_generated(20).await;
        let (relay, store) = hung_s3().await;
        let job = new_job(&db).await;

        relay.hang(true);
        let a = keep_exporting(default_exporter(&db, store.clone(), "900"), &db, job);
        let b = keep_exporting(default_exporter(&db, store.clone(), "900"), &db, job);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let during = jobs::get_job(&db.pool, job)
            .await
            .expect("db")
            .expect("job");
        assert_eq!(
            during.status,
            JobStatus::Active,
            "waiting for S3, not failed: {:?}",
            during.error
        );
        let client = db.pool.get().await.expect("conn");
        let down: i64 = client
            .query_one(
                "SELECT count(*) FROM export_work_items
                 WHERE job_id = $1 AND storage_down_since IS NOT NULL",
                &[&job],
            )
            .await
            .expect("items")
            .get(0);
        assert!(down > 0, "the outage is recorded on the items it holds up");
        relay.hang(false);
        let recovered = completed_within(&db, job, LEASE * 3).await;
        eprintln!("complete {recovered:?} after a 60 s outage");
        a.abort();
        b.abort();
        let (attempts, down): (i32, i64) = {
            let row = client
                .query_one(
                    "SELECT coalesce(max(attempts), 0),
                            count(*) FILTER (WHERE storage_down_since IS NOT NULL)
                     FROM export_work_items WHERE job_id = $1",
                    &[&job],
                )
                .await
                .expect("items");
            (row.get(0), row.get(1))
        };
        assert_eq!(attempts, 0, "an outage is not an attempt");
        assert_eq!(down, 0, "progress ends the outage");

        let rows = stored_resources(&db.pool, store.as_ref(), job).await;
        assert_exact(&rows, data.count_by_type());
    }

    /// An outage longer than STORAGE_OUTAGE_SECONDS fails the job, saying so.
    #[tokio::test]
    async fn an_s3_outage_past_its_limit_fails_the_export_saying_why() {
        let db = TestDb::with_generated(3).await.0;
        let (relay, store) = hung_s3().await;
        let job = new_job(&db).await;
        relay.hang(true);
        let a = keep_exporting(default_exporter(&db, store.clone(), "3"), &db, job);
        let started = Instant::now();
        let failed = loop {
            let j = jobs::get_job(&db.pool, job)
                .await
                .expect("db")
                .expect("job");
            if j.status == JobStatus::Failed {
                break j;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "still {:?} after 60 s of an outage limited to 3 s",
                j.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        a.abort();
        relay.hang(false);
        let error = failed.error.unwrap_or_default();
        assert!(
            error.contains("the storage was unavailable for STORAGE_OUTAGE_SECONDS (3 s)"),
            "{error}"
        );
        let public = failed.public_error.unwrap_or_default();
        assert!(public.contains("storage was unavailable"), "{public}");
    }

    /// A local store whose first write never returns (a storage call stuck beyond any timeout)
    /// and whose calls are overdue after 1 s.
    struct StuckStore {
        inner: LocalStore,
        stuck: Arc<AtomicBool>,
    }

    struct StuckWriter {
        inner: Box<dyn ObjectWriter>,
        stuck: Arc<AtomicBool>,
    }

    #[async_trait]
    impl ObjectStore for StuckStore {
        async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
            Ok(Box::new(StuckWriter {
                inner: self.inner.writer(key).await?,
                stuck: self.stuck.clone(),
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
        fn call_deadline(&self) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
    }

    #[async_trait]
    impl ObjectWriter for StuckWriter {
        async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
            if !self.stuck.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.write(data).await
        }
        async fn finish(self: Box<Self>) -> Result<Written, StorageError> {
            self.inner.finish().await
        }
        async fn abort(self: Box<Self>) -> Result<(), StorageError> {
            self.inner.abort().await
        }
    }

    /// An exporter whose storage call is overdue stops renewing its item's lease, so another
    /// exporter takes the item after one lease. Before, the heartbeat kept the lease as long
    /// as the call hung.
    #[tokio::test]
    async fn the_lease_of_an_exporter_whose_storage_call_is_overdue_lapses() {
        let (db, data) = TestDb::with_generated(20).await;
        let dir = temp_dir();
        let stuck = Arc::new(AtomicBool::new(false));
        let hung: Arc<dyn ObjectStore> = Arc::new(StuckStore {
            inner: LocalStore::new(dir.clone()).expect("store"),
            stuck: stuck.clone(),
        });
        let healthy: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
        let job = new_job(&db).await;

        let a = keep_exporting(exporter(&db, hung), &db, job);
        let started = Instant::now();
        while !stuck.load(Ordering::SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no write began"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b = keep_exporting(exporter(&db, healthy.clone()), &db, job);
        let took = completed_within(&db, job, LEASE * 3).await;
        eprintln!("complete {took:?} after the storage call got stuck");
        a.abort();
        b.abort();

        let rows = stored_resources(&db.pool, healthy.as_ref(), job).await;
        assert_exact(&rows, data.count_by_type());
    }
}
