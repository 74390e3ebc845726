//! Two exporters on one database with different storages: a job's files are written only to
//! the storage it was kicked off for, where the process that serves its manifest finds them.

use super::*;

/// A store whose writes never start: an exporter using it plans a job and then hangs on its
/// first item.
struct Hanging;

#[async_trait]
impl ObjectStore for Hanging {
    async fn writer(&self, _key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        std::future::pending().await
    }
    async fn delete_prefix(&self, _prefix: &str) -> Result<u64, StorageError> {
        Ok(0)
    }
    async fn download(&self, _key: &str, _ttl: Duration) -> Result<Download, StorageError> {
        std::future::pending().await
    }
    async fn read(&self, _key: &str) -> Result<Vec<u8>, StorageError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_job_is_exported_only_by_an_exporter_writing_to_its_storage() {
    let (db, data) = TestDb::with_generated(5).await;
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let config_a = cfg(&db, &[("STORAGE_PATH", dir_a.to_str().expect("utf8"))]);
    let config_b = cfg(&db, &[("STORAGE_PATH", dir_b.to_str().expect("utf8"))]);
    let store_a: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir_a.clone()).expect("store"));
    let store_b: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir_b.clone()).expect("store"));
    assert_ne!(
        config_a.storage_path.identity(),
        config_b.storage_path.identity()
    );
    let empty_b = || std::fs::read_dir(&dir_b).expect("dir").next().is_none();

    // Kicked off on A: the job names A's storage.
    let job = jobs::insert_job_in(
        &db.pool,
        NewJob {
            level: ExportLevel::System,
            group_id: None,
            params: &ExportParams::default(),
            request_url: "http://a/$export",
            client_id: None,
        },
        NO_LIMITS,
        Some(&config_a.storage_path.identity()),
    )
    .await
    .expect("insert job")
    .expect("within limits");

    // B leaves the queued job alone: it does not plan it.
    let summary = exporter(&db, store_b.clone(), config_b.clone())
        .run_until_idle(None, far())
        .await
        .expect("run b");
    assert!(summary.completed.is_empty(), "{summary:?}");
    assert_eq!(status(&db, job.id).await.status, JobStatus::Queued);
    assert!(empty_b());

    // A plans it and hangs on its first item; its leases lapse.
    let hung = tokio::time::timeout(
        Duration::from_secs(3),
        exporter(&db, Arc::new(Hanging), config_a.clone()).run_until_idle(None, far()),
    )
    .await;
    assert!(hung.is_err(), "A's exporter hangs on its first write");
    let client = db.pool.get().await.expect("conn");
    let items = client
        .execute(
            "UPDATE export_work_items SET lease_owner = NULL, lease_expires_at = NULL
             WHERE job_id = $1",
            &[&job.id],
        )
        .await
        .expect("lapse");
    assert!(items > 0, "the job was planned");
    drop(client);

    // B takes none of its items either.
    let summary = exporter(&db, store_b.clone(), config_b)
        .run_until_idle(None, far())
        .await
        .expect("run b");
    assert!(summary.completed.is_empty(), "{summary:?}");
    assert_eq!(summary.items, 0, "{summary:?}");
    assert!(empty_b());

    // A's exporter exports it, and every file of its manifest is in A's storage.
    let summary = exporter(&db, store_a.clone(), config_a)
        .run_until_idle(None, far())
        .await
        .expect("run a");
    assert_eq!(summary.completed, vec![job.id]);
    let rows = stored_resources(&db.pool, store_a.as_ref(), job.id).await;
    assert_eq!(rows.len(), data.resources.len());
    assert_no_duplicates(&rows);
    assert!(empty_b());
}
