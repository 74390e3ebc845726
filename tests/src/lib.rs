//! Test support: a fresh Postgres database per test, the S3/SQS emulator endpoint started by
//! `scripts/test.sh`, an in-process `bulk-export serve`, and the test data set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shared::app::AppState;
use shared::config::StoragePath;
use shared::db::{self, Pool};
use shared::storage::local::LocalStore;
use shared::storage::ObjectStore;
use shared::Config;

mod server;
pub use server::*;
mod aws;
pub use aws::*;
mod client;
pub use client::*;
pub mod bench;
pub mod data;
pub mod lambda_rig;

/// Admin connection used to create per-test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A new test database's name: `bulkt_<pid>_<uuid>`, so that `scripts/test.sh` drops what a
/// killed run left without touching the databases of a test binary still running.
fn db_name() -> String {
    format!(
        "bulkt_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A database of its own, migrated; dropped when the value is (at the end of its test, pass
/// or fail: a panicking test unwinds and drops it too).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: Pool,
}

/// `DROP DATABASE … WITH (FORCE)` (ends the connections still open to it: a server task or a
/// child process of the test), from a thread of its own so that it works inside or outside a
/// runtime. Errors are ignored: scripts/test.sh drops whatever is left at its end.
fn drop_database(name: &str) {
    let name = name.to_string();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    })
    .join();
}

/// Drops database `name` when this process ends, however it ends (even killed): a child
/// `sh` waits for its stdin, a pipe from this process, to close, then runs `psql`. Used for the
/// template database, which lives as long as the test binary. Without `sh`/`psql` it does
/// nothing (scripts/test.sh drops leftovers).
fn drop_database_at_exit(name: &str) {
    static GUARDS: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cat >/dev/null; psql "$0" -X -q -w -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1"#)
        .arg(admin_url())
        .arg(name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(child) = child {
        GUARDS.lock().expect("guards").push(child);
    }
}

fn url_for(db_name: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL has a database path");
    format!("{base}/{db_name}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        drop_database(&self.name);
    }
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = db_name();
        Self::create(&name).await;
        let url = url_for(&name);
        let pool = db::pool(&url, 16).expect("pool");
        db::migrate(&pool).await.expect("migrate");
        TestDb { name, url, pool }
    }

    /// A new database without the schema (no migrations applied).
    pub async fn empty() -> TestDb {
        let name = db_name();
        Self::create(&name).await;
        Self::connect(&name)
    }

    /// Connects to an existing database (created by [`TestDb::new`] elsewhere).
    pub fn connect(name: &str) -> TestDb {
        let url = url_for(name);
        let pool = db::pool(&url, 16).expect("pool");
        TestDb {
            name: name.to_string(),
            url,
            pool,
        }
    }

    async fn create(name: &str) {
        let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to Postgres at TEST_DATABASE_URL (scripts/test.sh starts it)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
    }
}

/// Loads `resource` (a resource or a transaction Bundle) through the loader, as
/// `bulk-export load` would.
pub async fn load_json(pool: &Pool, resource: &serde_json::Value) -> shared::load::LoadReport {
    let dir = temp_dir();
    std::fs::write(dir.join("changes.json"), resource.to_string()).expect("write");
    shared::load::load_paths(pool, &[dir], |_| {})
        .await
        .expect("load")
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until something listens on `port` (a `bulk-export serve` just spawned).
pub async fn wait_listening(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not listen on {port}");
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkt-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The `bulk-export` binary next to the running test binary (target/debug/deps/x → target/debug).
pub fn bulk_export_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join("bulk-export");
    assert!(
        bin.exists(),
        "{bin:?} missing: cargo build --workspace --bins (scripts/test.sh does)"
    );
    bin
}

/// Path of a data set under ../shared/data, when this machine has it.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    shared_dir(&format!("data/{name}"))
}

/// A directory under ../shared (beside the checkout), when it exists and `TEST_WITHOUT_SHARED`
/// is not set. A user's clone has no ../shared; CI runs the integration tests both ways.
pub fn shared_dir(path: &str) -> Option<PathBuf> {
    if std::env::var("TEST_WITHOUT_SHARED").is_ok_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = here.join("../../shared").join(path);
    dir.is_dir().then_some(dir)
}

/// A database loaded once per test binary with the test data set, used as a TEMPLATE so each
/// test gets its own copy in a fraction of a second.
pub struct LoadedTemplate {
    pub template: String,
    pub data: data::DataSet,
}

static TEMPLATE: std::sync::OnceLock<LoadedTemplate> = std::sync::OnceLock::new();

pub fn loaded_template() -> &'static LoadedTemplate {
    TEMPLATE.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let data = data::DataSet::load();
                let db = TestDb::new().await;
                let report =
                    shared::load::load_paths(&db.pool, std::slice::from_ref(&data.dir), |_| {})
                        .await
                        .expect("load data set");
                assert!(report.rejected.is_empty(), "{:?}", report.rejected);
                assert_eq!(report.loaded as usize, data.resources.len());
                db.pool.close();
                // The template outlives every test: it is dropped when the test binary exits.
                let template = db.name.clone();
                std::mem::forget(db);
                drop_database_at_exit(&template);
                LoadedTemplate { template, data }
            })
        })
        .join()
        .expect("loader thread")
    })
}

impl TestDb {
    /// A fresh database copied from the loaded template.
    pub async fn from_template() -> (TestDb, &'static data::DataSet) {
        let tpl = loaded_template();
        let name = db_name();
        let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        // CREATE DATABASE … TEMPLATE fails while another copy is being made; retry briefly.
        let mut tries = 0;
        loop {
            match client
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {}", tpl.template))
                .await
            {
                Ok(()) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create database from template: {e}"),
            }
        }
        (TestDb::connect(&name), &tpl.data)
    }
}

impl TestDb {
    /// A fresh database loaded with a generated data set of `patients` patients.
    pub async fn with_generated(patients: usize) -> (TestDb, data::DataSet) {
        let dir = temp_dir();
        data::generate(&dir, patients);
        let data = data::DataSet::from_dir(dir);
        let db = TestDb::new().await;
        let report = shared::load::load_paths(&db.pool, std::slice::from_ref(&data.dir), |_| {})
            .await
            .expect("load");
        assert!(report.rejected.is_empty());
        (db, data)
    }
}

/// Reads every output file of a finished job straight from storage: (type, resource JSON).
pub async fn stored_resources(
    pool: &Pool,
    store: &dyn ObjectStore,
    job_id: uuid::Uuid,
) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for f in shared::db::files::select_files(pool, job_id)
        .await
        .expect("files")
    {
        if f.kind != shared::export::manifest::FileKind::Output {
            continue;
        }
        let bytes = store.read(&f.object_key).await.expect("read file");
        let text = String::from_utf8(bytes).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len() as i64,
            f.resource_count,
            "{} count",
            f.file_name
        );
        assert_eq!(text.len() as i64, f.byte_count, "{} bytes", f.file_name);
        for line in lines {
            out.push((
                f.resource_type.clone(),
                serde_json::from_str(line).expect("json"),
            ));
        }
    }
    out
}
