//! Fan-out: one export split into work items that several exporters share. Four exporters give
//! byte for byte the files one gives; a `serve` killed with SIGKILL in the middle of a fanned-out
//! export loses and duplicates nothing once it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{
    bulk_export_bin, free_port, stored_resources, temp_dir, wait_listening, TestDb,
};
use shared::db::jobs::{self, NewJob};
use shared::db::work_items;
use shared::export::engine::Exporter;
use shared::export::{ExportLevel, ExportParams, Job, JobStatus};
use shared::queue::NoQueue;
use shared::storage::local::LocalStore;
use shared::storage::ObjectStore;
use shared::Config;

fn config(db: &TestDb, extra: &[(&str, &str)]) -> Arc<Config> {
    integration_tests::config_with(db, extra)
}

pub(crate) async fn system_job(db: &TestDb) -> Job {
    let params = ExportParams {
        output_format: Default::default(),
        ..Default::default()
    };
    jobs::insert_job(
        &db.pool,
        NewJob {
            level: ExportLevel::System,
            group_id: None,
            params: &params,
            request_url: "http://test/$export",
            client_id: None,
        },
        jobs::JobLimits {
            running: i64::MAX,
            stored: i64::MAX,
        },
    )
    .await
    .expect("insert")
    .expect("within limits")
}

/// Every file of a job: name → (resource count, bytes).
async fn files_of(
    db: &TestDb,
    store: &dyn ObjectStore,
    job: uuid::Uuid,
) -> BTreeMap<String, (i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for f in shared::db::files::select_files(&db.pool, job)
        .await
        .expect("files")
    {
        let bytes = store.read(&f.object_key).await.expect("read");
        out.insert(f.file_name, (f.resource_count, bytes));
    }
    out
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_exporters_write_byte_identical_files_to_one() {
    let (db, data) = TestDb::with_generated(30).await;
    // Small items and files: the larger types are split into several key ranges.
    let cfg = config(
        &db,
        &[("EXPORT_ITEM_BYTES", "40000"), ("MAX_FILE_BYTES", "30000")],
    );
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(temp_dir()).expect("store"));
    let exporter = |n: usize| {
        Exporter::new(
            db.pool.clone(),
            store.clone(),
            Arc::new(NoQueue),
            cfg.clone(),
        )
        .with_owner(format!("worker-{n}"))
    };

    let alone = system_job(&db).await;
    let summary = exporter(0).run_until_idle(None, far()).await.expect("run");
    assert_eq!(summary.completed, vec![alone.id]);
    let items = work_items::select_work_items(&db.pool, alone.id)
        .await
        .expect("items");
    let observation_parts = items
        .iter()
        .filter(|i| i.resource_type == "Observation")
        .count();
    assert!(
        observation_parts >= 3,
        "Observation split in {observation_parts}"
    );
    // Nothing changed after the transaction time: every item ended with phase 0 (phase 1,
    // which can only export resources changed since, was skipped).
    assert!(
        items
            .iter()
            .all(|i| i.done && i.phase == shared::db::work_items::Phase::Current),
        "{:?}",
        items
            .iter()
            .map(|i| (&i.resource_type, i.part, i.phase, i.done))
            .collect::<Vec<_>>()
    );

    let shared_job = system_job(&db).await;
    // Four exporters share its items (each goes on until the job is complete: those that find
    // nothing while it is being planned look again, as a woken `serve` worker would).
    let runs = futures::future::join_all((1..=4).map(|n| {
        let pool = db.pool.clone();
        async move {
            let ex = exporter(n);
            let mut total = shared::export::engine::RunSummary::default();
            loop {
                let run = ex.run_until_idle(None, far()).await.expect("run");
                total.completed.extend(run.completed);
                total.items += run.items;
                let job = jobs::get_job(&pool, shared_job.id)
                    .await
                    .expect("db")
                    .expect("job");
                if job.status == JobStatus::Complete {
                    break total;
                }
                // Queued: another exporter's claim is not committed yet.
                assert!(
                    matches!(job.status, JobStatus::Active | JobStatus::Queued),
                    "{:?}: {:?}",
                    job.status,
                    job.error
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }))
    .await;
    let completed: Vec<uuid::Uuid> = runs.iter().flat_map(|r| r.completed.clone()).collect();
    assert_eq!(
        completed,
        vec![shared_job.id],
        "completed exactly once: {runs:?}"
    );
    let busy = runs.iter().filter(|r| r.items > 0).count();
    assert!(busy >= 2, "the items were shared: {runs:?}");
    assert_eq!(
        runs.iter().map(|r| r.items).sum::<usize>(),
        items.len(),
        "each item done once"
    );

    let one = files_of(&db, store.as_ref(), alone.id).await;
    let four = files_of(&db, store.as_ref(), shared_job.id).await;
    assert!(
        one.keys().any(|n| n.starts_with("Observation-001-")),
        "{:?}",
        one.keys()
    );
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        four.keys().collect::<Vec<_>>()
    );
    for (name, (count, bytes)) in &one {
        let (c4, b4) = &four[name];
        assert_eq!(count, c4, "{name}");
        assert!(bytes == b4, "{name} differs");
    }
    let rows = stored_resources(&db.pool, store.as_ref(), shared_job.id).await;
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (t, r) in &rows {
        *by_type.entry(t.clone()).or_default() += 1;
        assert!(
            seen.insert((t.clone(), r["id"].to_string())),
            "duplicate {t}"
        );
    }
    assert_eq!(by_type, data.count_by_type());
}

fn serve(db: &TestDb, dir: &std::path::Path, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(bulk_export_bin())
        .args(["serve", "--workers", "3", "--insecure"])
        .env("DATABASE_URL", &db.url)
        .env("STORAGE_PATH", dir)
        .env("PORT", port.to_string())
        .env("EXPORT_ITEM_BYTES", "20000")
        .env("MAX_FILE_BYTES", "3000")
        .env("REPEAT_PERIOD", "200")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("serve starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_during_fan_out_loses_and_duplicates_nothing() {
    let (db, data) = TestDb::with_generated(40).await;
    let dir = temp_dir();
    let port = free_port();
    let mut first = serve(&db, &dir, port);
    wait_listening(port).await;
    let client = integration_tests::http_client();
    let kick = client
        .get(format!("http://127.0.0.1:{port}/$export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(kick.status(), 202);
    let location = kick.headers()["content-location"]
        .to_str()
        .expect("location")
        .to_string();
    let job_id: uuid::Uuid = location
        .rsplit("_id=")
        .next()
        .and_then(|s| s.parse().ok())
        .expect("job id");

    // Kill -9 once several items are under way and files are written, but the job is not done.
    let started = Instant::now();
    let (files_then, leased_then) = loop {
        let row = db
            .pool
            .get()
            .await
            .expect("conn")
            .query_one(
                "SELECT (SELECT count(*) FROM export_files WHERE job_id = $1),
                        (SELECT count(*) FROM export_work_items WHERE job_id = $1
                           AND lease_owner IS NOT NULL AND NOT done),
                        (SELECT status FROM export_jobs WHERE id = $1)",
                &[&job_id],
            )
            .await
            .expect("progress");
        let (files, leased, status): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        assert_ne!(
            status, "Complete",
            "finished before the kill: make it slower"
        );
        if files >= 5 && leased >= 2 {
            break (files, leased);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.kill().await.expect("SIGKILL");
    assert!(files_then >= 5 && leased_then >= 2);

    // The same serve (same host, port and worker names) comes back and resumes at once.
    let _second = serve(&db, &dir, port);
    wait_listening(port).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = jobs::get_job(&db.pool, job_id)
            .await
            .expect("db")
            .expect("job");
        if job.status == JobStatus::Complete {
            break;
        }
        assert!(
            matches!(job.status, JobStatus::Active | JobStatus::Queued),
            "{:?}: {:?}",
            job.status,
            job.error
        );
        assert!(Instant::now() < deadline, "not complete after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = LocalStore::new(dir).expect("store");
    let rows = stored_resources(&db.pool, &store, job_id).await;
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (t, r) in &rows {
        *by_type.entry(t.clone()).or_default() += 1;
        assert!(
            seen.insert((t.clone(), r["id"].to_string())),
            "duplicate {t}/{}",
            r["id"]
        );
    }
    assert_eq!(by_type, data.count_by_type(), "nothing lost");
    let items = work_items::select_work_items(&db.pool, job_id)
        .await
        .expect("items");
    assert!(items.len() > 10, "fanned out: {} items", items.len());
    assert!(items.iter().all(|i| i.done));
}
