//! Exact at transactionTime under concurrent writes, in both phases: after the transaction time
//! and before the export reads, and while an export of one type runs, resources behind the read
//! cursor (already exported) and ahead of it are updated and deleted, during phase 0 and during
//! phase 1. The export holds each resource of the type
//! exactly once, as it was at the transaction time. (Before, a resource exported in phase 0 and
//! changed afterwards was exported again by phase 1.) A `$viewdefinition-export` over a type
//! cut into several items is held to the same: its rows are the view of the data at the
//! transaction time while inserts, updates and deletes go on.

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

/// A store whose writers report each page written and wait for the test to let them go on.
fn pausing_store() -> (
    Arc<PausingStore>,
    mpsc::UnboundedReceiver<(String, oneshot::Sender<()>)>,
) {
    let (pages, seen) = mpsc::unbounded_channel();
    let store = Arc::new(PausingStore {
        inner: LocalStore::new(temp_dir()).expect("store"),
        pages,
    });
    (store, seen)
}

/// Queues a job as a kick-off does (its transaction time is now); the test's writes start a
/// little after it.
async fn queue_job(
    db: &TestDb,
    level: ExportLevel,
    params: &ExportParams,
    request_url: &str,
) -> shared::export::Job {
    let job = jobs::insert_job(
        &db.pool,
        NewJob {
            level,
            group_id: None,
            params,
            request_url,
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
    job
}

/// An exporter over `store` that reads 10 rows at a time, so that the test's writes land
/// between its batches.
fn paging_exporter(db: &TestDb, store: Arc<PausingStore>, config: Arc<shared::Config>) -> Exporter {
    let mut e = Exporter::new(db.pool.clone(), store, Arc::new(NoQueue), config);
    e.page_rows = 10;
    e
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

    let (store, mut seen) = pausing_store();
    let config = integration_tests::config_with(&db, &[]);
    let params = ExportParams {
        types: Some(vec!["Observation".into()]),
        output_format: Default::default(),
        ..Default::default()
    };
    let job = queue_job(
        &db,
        ExportLevel::System,
        &params,
        "http://test/$export?_type=Observation",
    )
    .await;

    let exporter = paging_exporter(&db, store.clone(), config);
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

/// Two views of Observation: one row per resource (its status, version and value), and one row
/// per coding of its code.
const VIEWS_KICKOFF: &str = r#"{"resourceType": "Parameters", "parameter": [
  {"name": "view", "part": [{"name": "viewResource", "resource": {
    "resourceType": "ViewDefinition", "name": "observation_versions", "resource": "Observation",
    "status": "active", "select": [{"column": [
      {"name": "id", "path": "getResourceKey()"},
      {"name": "status", "path": "status"},
      {"name": "version", "path": "meta.versionId"},
      {"name": "value", "path": "value.ofType(Quantity).value"}]}]}}]},
  {"name": "view", "part": [{"name": "viewResource", "resource": {
    "resourceType": "ViewDefinition", "name": "codings", "resource": "Observation",
    "status": "active", "select": [
      {"column": [{"name": "id", "path": "getResourceKey()"}]},
      {"forEach": "code.coding", "column": [
        {"name": "system", "path": "system"}, {"name": "code", "path": "code"}]}]}}]},
  {"name": "_format", "valueCode": "ndjson"}]}"#;

/// What the two views give over `resources` (id → stored text), computed from the JSON here,
/// not by the view evaluator: (view name → rows as sorted JSON text).
fn expected_view_rows(resources: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    use serde_json::{json, Value};
    let mut versions = Vec::new();
    let mut codings = Vec::new();
    for text in resources.values() {
        // A missing element is null (indexing a Value gives Null).
        let o: Value = serde_json::from_str(text).expect("json");
        versions.push(
            json!({
                "id": o["id"],
                "status": o["status"],
                "version": o["meta"]["versionId"],
                "value": o["valueQuantity"]["value"],
            })
            .to_string(),
        );
        for c in o["code"]["coding"].as_array().into_iter().flatten() {
            codings
                .push(json!({"id": o["id"], "system": c["system"], "code": c["code"]}).to_string());
        }
    }
    versions.sort();
    codings.sort();
    [
        ("codings".to_string(), codings),
        ("observation_versions".to_string(), versions),
    ]
    .into()
}

/// Inserts, updates and deletes Observations, choosing what with a fixed pseudo-random sequence.
/// Two writers work on disjoint ids (`parity`: the even or the odd ones of `ids`, and the new
/// ids each makes), so that they never change one resource at the same instant.
struct Writer {
    pool: shared::db::Pool,
    ids: Vec<String>,
    parity: usize,
    state: u64,
    next_new: usize,
    /// Changes committed.
    changes: usize,
}

impl Writer {
    fn new(pool: shared::db::Pool, ids: Vec<String>, parity: usize, seed: u64) -> Writer {
        Writer {
            pool,
            ids,
            parity,
            state: seed,
            next_new: 0,
            changes: 0,
        }
    }

    fn next(&mut self, n: usize) -> usize {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }

    /// One change to an id among `candidates` (an index range of the ids): an update (new
    /// status, codings and value), a delete, a new Observation whose id sorts right after it,
    /// or an update of an id that may have been deleted (which brings it back).
    async fn change_one(&mut self, candidates: std::ops::Range<usize>) {
        let span = candidates.end.saturating_sub(candidates.start);
        let mut i = candidates.start + self.next(span);
        if i % 2 != self.parity {
            if i + 1 < candidates.end {
                i += 1;
            } else if i > candidates.start {
                i -= 1;
            } else {
                return;
            }
        }
        let id = self.ids[i].clone();
        let op = self.next(4);
        let tag = format!("w{}", self.state % 100_000);
        match op {
            1 => {
                shared::db::resources::delete_resources(&self.pool, &[("Observation".into(), id)])
                    .await
                    .expect("delete");
            }
            _ => {
                let id = if op == 2 {
                    self.next_new += 1;
                    format!("{id}-new{}-{}", self.parity, self.next_new)
                } else {
                    id
                };
                let codings = (0..=self.next(3))
                    .map(|k| format!("{{\"system\":\"urn:changed\",\"code\":\"{tag}-{k}\"}}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let text = format!(
                    "{{\"resourceType\":\"Observation\",\"id\":\"{id}\",\"status\":\"amended\",\
                     \"code\":{{\"coding\":[{codings}]}},\"valueQuantity\":{{\"value\":0.{}}}}}",
                    self.next(1000)
                );
                let r = shared::load::prepare(text).expect("prepare");
                shared::db::resources::upsert_resources(&self.pool, vec![r], false)
                    .await
                    .expect("upsert");
            }
        }
        self.changes += 1;
    }
}

/// The item an exporter holds now: (part, phase, ids in (lo, hi]).
async fn leased_item(
    pool: &shared::db::Pool,
    job: uuid::Uuid,
) -> Option<(i32, i16, String, Option<String>)> {
    pool.get()
        .await
        .expect("conn")
        .query_opt(
            "SELECT part, phase, lo_id, hi_id FROM export_work_items
             WHERE job_id = $1 AND lease_owner IS NOT NULL AND NOT done LIMIT 1",
            &[&job],
        )
        .await
        .expect("item")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// `$viewdefinition-export` is exact at its transaction time as `$export` is (issue 29 item 2):
/// a view export of Observation cut into several items, read 10 rows at a time, while
/// Observations are inserted, updated (more or fewer codings, a new version) and deleted — in
/// the item being read (ahead of and behind its cursor), in items done and in items to come,
/// during phase 0 and phase 1, by writes between two reads of the exporter and by a writer that
/// never waits. Each view's rows are exactly those of the Observations as they were at the
/// transaction time: none lost, none twice, no row of a later version or a new resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_export_holds_the_rows_of_its_transaction_time_under_concurrent_writes() {
    let (db, _data) = TestDb::with_generated(30).await;
    let query = "SELECT id, resource FROM resources
                 WHERE resource_type = 'Observation' AND NOT deleted ORDER BY id";
    let rows_of = |pool: shared::db::Pool| async move {
        pool.get()
            .await
            .expect("conn")
            .query(query, &[])
            .await
            .expect("read")
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<BTreeMap<String, String>>()
    };
    let before = rows_of(db.pool.clone()).await;
    assert_eq!(before.len(), 360);
    let expected = expected_view_rows(&before);
    let ids: Vec<String> = before.keys().cloned().collect();

    let kickoff = shared::views::parse_kickoff(VIEWS_KICKOFF.as_bytes(), &[], &Default::default())
        .expect("the views");
    let job = queue_job(
        &db,
        kickoff.level,
        &kickoff.params,
        "http://test/$viewdefinition-export",
    )
    .await;

    let (store, mut seen) = pausing_store();
    // Items of about 40 kB (Observation in several key ranges), files of at most 8 KiB.
    let config = integration_tests::config_with(
        &db,
        &[("EXPORT_ITEM_BYTES", "40000"), ("MAX_FILE_BYTES", "8192")],
    );
    let exporter = paging_exporter(&db, store.clone(), config);

    // After the transaction time, before anything is read.
    let mut writer = Writer::new(db.pool.clone(), ids.clone(), 0, 0x5eed_0001);
    for _ in 0..12 {
        writer.change_one(0..ids.len()).await;
    }
    // A writer that never waits for the exporter.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let stop = stop.clone();
        let mut w = Writer::new(db.pool.clone(), ids.clone(), 1, 0x5eed_0002);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                w.change_one(0..w.ids.len()).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            w.changes
        })
    };

    let mut run = tokio::spawn(async move {
        exporter
            .run_until_idle(None, Instant::now() + Duration::from_secs(120))
            .await
    });
    // (part, phase) of the items written to while they were being read.
    let mut changed_during: std::collections::BTreeSet<(i32, i16)> = Default::default();
    let mut writes = 0usize;
    let summary = loop {
        let (_, go) = tokio::select! {
            page = seen.recv() => page.expect("the store is alive"),
            done = &mut run => break done.expect("task").expect("run"),
        };
        writes += 1;
        // Every third write of a file (a page of one view), three changes: two in the range of
        // the item being read, one anywhere.
        if writes.is_multiple_of(3) {
            if let Some((part, phase, lo, hi)) = leased_item(&db.pool, job.id).await {
                let start = ids.partition_point(|id| *id <= lo);
                let end = hi.map_or(ids.len(), |hi| ids.partition_point(|id| *id <= hi));
                if start < end {
                    writer.change_one(start..end).await;
                    writer.change_one(start..end).await;
                    changed_during.insert((part, phase));
                }
                writer.change_one(0..ids.len()).await;
            }
        }
        let _ = go.send(());
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let background_changes = background.await.expect("writer");
    assert_eq!(summary.completed, vec![job.id]);
    assert_eq!(
        jobs::get_job(&db.pool, job.id)
            .await
            .expect("db")
            .expect("job")
            .status,
        JobStatus::Complete
    );
    let items = shared::db::work_items::select_work_items(&db.pool, job.id)
        .await
        .expect("items");
    assert!(items.len() >= 3, "Observation in {} items", items.len());
    // The data did change, a lot.
    let after = rows_of(db.pool.clone()).await;
    assert!(
        writer.changes + background_changes > 100,
        "{} + {background_changes} changes",
        writer.changes
    );
    assert_ne!(expected_view_rows(&after), expected);

    let rows = stored_resources(&db.pool, store.as_ref(), job.id).await;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (view, row) in &rows {
        got.entry(view.clone()).or_default().push(row.to_string());
    }
    for rows in got.values_mut() {
        rows.sort();
    }
    // One row per Observation in the first view: no id twice, none missing.
    let version_ids: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter(|(v, _)| v == "observation_versions")
        .map(|(_, r)| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        version_ids.len(),
        got.get("observation_versions").map_or(0, Vec::len),
        "no Observation twice"
    );
    assert_eq!(version_ids.len(), before.len(), "every Observation once");
    for view in ["observation_versions", "codings"] {
        assert_eq!(
            got.get(view).map_or(0, Vec::len),
            expected[view].len(),
            "{view}: rows"
        );
        assert_eq!(
            got[view], expected[view],
            "{view}: the rows of the transaction time"
        );
    }
    // And the writes did hit both phases of several items.
    let parts_in_phase = |phase: i16| changed_during.iter().filter(|(_, p)| *p == phase).count();
    assert!(
        parts_in_phase(0) >= 2 && parts_in_phase(1) >= 1,
        "writes during phase 0 of several items and during phase 1: {changed_during:?}"
    );
}
