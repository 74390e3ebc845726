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
                unavailable: false,
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

mod blocks;
mod exactness;
mod failures;
mod scope;
mod storages;
