//! Exact at transactionTime under concurrent writes, in both phases: after the transaction time
//! and before the export reads, and while an export of one type runs, resources behind the read
//! cursor (already exported) and ahead of it are updated and deleted, during phase 0 and during
//! phase 1. The export holds each resource of the type
//! exactly once, as it was at the transaction time. (Before, a resource exported in phase 0 and
//! changed afterwards was exported again by phase 1.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use integration_tests::{stored_resources, temp_dir, TestDb};
use shared::db::jobs::{self, NewJob};
use shared::export::engine::Exporter;
use shared::export::{ExportLevel, ExportParams, JobStatus};
use shared::fhir::raw::RawObject;
use shared::queue::NoQueue;
use shared::storage::local::LocalStore;
use shared::storage::{Download, ObjectStore, ObjectWriter, StorageError, Written};
use tokio::sync::{mpsc, oneshot};

/// The first id of each page written, sent to the test, which answers when the exporter may go
/// on: the test changes the database while the exporter waits between two reads.
type Rendezvous = mpsc::UnboundedSender<(String, oneshot::Sender<()>)>;

struct PausingStore {
    inner: LocalStore,
    pages: Rendezvous,
}

struct PausingWriter {
    inner: Box<dyn ObjectWriter>,
    pages: Rendezvous,
}

#[async_trait]
impl ObjectStore for PausingStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(PausingWriter {
            inner: self.inner.writer(key).await?,
            pages: self.pages.clone(),
        }))
    }
    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.read(key).await
    }
    async fn download(&self, key: &str, ttl: Duration) -> Result<Download, StorageError> {
        self.inner.download(key, ttl).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.inner.delete_prefix(prefix).await
    }
}

#[async_trait]
impl ObjectWriter for PausingWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let first = std::str::from_utf8(data)
            .ok()
            .and_then(|t| t.lines().next())
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        let (go, wait) = oneshot::channel();
        if self.pages.send((first, go)).is_ok() {
            let _ = wait.await;
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

fn without_meta(text: &str) -> String {
    let mut o = RawObject::parse(text).expect("object");
    o.retain(|k| k != "meta");
    o.to_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_behind_and_ahead_of_the_cursor_in_both_phases_change_nothing() {
    let (db, _data) = TestDb::with_generated(20).await;
    // The Observations as they are at the transaction time, in id order.
    let before: BTreeMap<String, String> = db
        .pool
        .get()
        .await
        .expect("conn")
        .query(
            "SELECT id, resource FROM resources WHERE resource_type = 'Observation' ORDER BY id",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ids: Vec<String> = before.keys().cloned().collect();
    assert_eq!(ids.len(), 240);

    let (pages, mut seen) = mpsc::unbounded_channel();
    let store = Arc::new(PausingStore {
        inner: LocalStore::new(temp_dir()).expect("store"),
        pages,
    });
    let config = integration_tests::config_with(&db, &[]);
    let params = ExportParams {
        types: Some(vec!["Observation".into()]),
        output_format: Default::default(),
        ..Default::default()
    };
    let job = jobs::insert_job(
        &db.pool,
        NewJob {
            level: ExportLevel::System,
            group_id: None,
            params: &params,
            request_url: "http://test/$export?_type=Observation",
            client_id: None,
        },
        jobs::JobLimits {
            running: 10,
            stored: 10,
        },
    )
    .await
    .expect("insert")
    .expect("limits");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let exporter = {
        let mut e = Exporter::new(db.pool.clone(), store.clone(), Arc::new(NoQueue), config);
        e.page_rows = 10;
        e
    };
    let (start, started) = oneshot::channel::<()>();
    let mut run = tokio::spawn(async move {
        let _ = started.await;
        exporter
            .run_until_idle(None, Instant::now() + Duration::from_secs(120))
            .await
    });

    // An update (new content) or a delete of `id`, committed before the exporter reads on.
    let change = |id: &str, delete: bool| {
        let pool = db.pool.clone();
        let id = id.to_string();
        async move {
            if delete {
                shared::db::resources::delete_resources(&pool, &[("Observation".into(), id)])
                    .await
                    .expect("delete");
            } else {
                let text = format!(
                    "{{\"resourceType\":\"Observation\",\"id\":\"{id}\",\"status\":\"amended\",\"code\":{{\"text\":\"changed\"}}}}"
                );
                let r = shared::load::prepare(text).expect("prepare");
                shared::db::resources::upsert_resources(&pool, vec![r], false)
                    .await
                    .expect("update");
            }
        }
    };

    // After the transaction time, before the export reads: phase 0 sees these changes (and
    // skips the changed resources), phase 1 exports their transaction-time versions.
    for (i, delete) in [
        (50, false),
        (51, true),
        (120, false),
        (160, true),
        (205, false),
    ] {
        change(&ids[i], delete).await;
    }
    let go = start.send(());
    assert!(go.is_ok(), "the exporter waits for the start");

    let mut previous_first = String::new();
    let mut phase0_done = false;
    let mut phase1_changes_done = false;
    let mut pages_seen = 0;
    // Pages until the export is done (the store keeps the channel open, so the run decides).
    let summary = loop {
        let (first, go) = tokio::select! {
            page = seen.recv() => page.expect("the store is alive"),
            done = &mut run => break done.expect("task").expect("run"),
        };
        pages_seen += 1;
        let phase1 = !previous_first.is_empty() && first < previous_first;
        if pages_seen == 8 && !phase0_done {
            // Phase 0, the cursor near ids[80]: behind it (exported), and ahead (not yet read).
            for (i, delete) in [(3, false), (15, true), (40, false), (70, true)] {
                change(&ids[i], delete).await;
            }
            for (i, delete) in [
                (100, false),
                (101, true),
                (150, false),
                (151, false),
                (152, false),
                (190, true),
                (200, false),
                (201, false),
                (210, false),
                (211, false),
                (212, false),
                (213, false),
                (220, false),
                (230, false),
                (239, true),
            ] {
                change(&ids[i], delete).await;
            }
            phase0_done = true;
        }
        if phase1 && !phase1_changes_done {
            // Phase 1 has read its first page: change again what it already exported, what it
            // is about to read, and what phase 0 exported.
            for (i, delete) in [
                (100, true),
                (200, false),
                (213, true),
                (5, false),
                (6, true),
            ] {
                change(&ids[i], delete).await;
            }
            phase1_changes_done = true;
        }
        previous_first = first;
        let _ = go.send(());
    };
    assert_eq!(summary.completed, vec![job.id]);
    assert!(phase0_done && phase1_changes_done, "both phases were hit");
    assert_eq!(
        jobs::get_job(&db.pool, job.id)
            .await
            .expect("db")
            .expect("job")
            .status,
        JobStatus::Complete
    );

    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &rows {
        *got.entry(r["id"].as_str().expect("id").to_string())
            .or_default() += 1;
    }
    let duplicates: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "exported twice: {duplicates:?}");
    assert_eq!(got.len(), before.len(), "every Observation once");
    // And each as it was at the transaction time, byte for byte apart from meta.
    for (_, r) in &rows {
        let id = r["id"].as_str().expect("id");
        assert_eq!(
            without_meta(&r.to_string()),
            without_meta(
                &serde_json::from_str::<serde_json::Value>(&before[id])
                    .expect("json")
                    .to_string()
            ),
            "{id}"
        );
    }
}
