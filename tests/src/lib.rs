//! Test support: a fresh Postgres database per test, the S3/SQS emulator endpoint started by
//! `scripts/test.sh`, an in-process `bulk-export serve`, and the test data set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shared::app::AppState;
use shared::config::StoragePath;
use shared::db::{self, Pool};
use shared::export::engine::Exporter;
use shared::queue::{JobQueue, LocalQueue};
use shared::storage::local::LocalStore;
use shared::storage::ObjectStore;
use shared::Config;

pub mod bench;
pub mod data;

/// Admin connection used to create per-test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own, migrated; dropped when the value is (at the end of its test, pass
/// or fail: a panicking test unwinds and drops it too).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: Pool,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        drop_database(&self.name);
    }
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

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("bulkt_{}", uuid::Uuid::new_v4().simple());
        Self::create(&name).await;
        let url = url_for(&name);
        let pool = db::pool(&url, 16).expect("pool");
        db::migrate(&pool).await.expect("migrate");
        TestDb { name, url, pool }
    }

    /// A new database without the schema (no migrations applied).
    pub async fn empty() -> TestDb {
        let name = format!("bulkt_{}", uuid::Uuid::new_v4().simple());
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

/// The S3/SQS emulator endpoint (moto), from TEST_AWS_ENDPOINT_URL.
pub fn aws_endpoint() -> String {
    std::env::var("TEST_AWS_ENDPOINT_URL").expect(
        "TEST_AWS_ENDPOINT_URL is not set: run the tests with scripts/test.sh, which starts an S3+SQS emulator",
    )
}

pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await
}

pub async fn s3_client() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(&aws_config().await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config().await)
}

/// A new bucket with a random name.
pub async fn new_bucket() -> (aws_sdk_s3::Client, String) {
    let client = s3_client().await;
    let bucket = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    (client, bucket)
}

/// A new SQS queue; returns its URL.
pub async fn new_queue() -> (aws_sdk_sqs::Client, String) {
    let client = sqs_client().await;
    let name = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
    let out = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("create queue");
    (client, out.queue_url().expect("queue url").to_string())
}

/// `bulk-export serve` in-process over a generated data set of `patients` patients, with local
/// storage in a temp directory, authorization off and `extra` settings on top of [`config`]'s.
pub async fn local_server(patients: usize, extra: &[(&str, &str)]) -> (Server, data::DataSet) {
    let (db, data) = TestDb::with_generated(patients).await;
    (TestServer::on(db).envs(extra).start().await, data)
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

/// A test configuration over `db` with local storage in a temp directory.
pub fn config(db: &TestDb, storage: StoragePath) -> Config {
    let storage = match storage {
        StoragePath::Local(p) => p.display().to_string(),
        StoragePath::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
    };
    lookup(&db.url, SERVE_DEFAULTS, &[("STORAGE_PATH", &storage)])
}

/// What the tests' servers run with unless told otherwise: a quick sweep, no authorization
/// (tests/auth.rs has its own), and the over-polling limit on but not hit by poll()'s 100 ms.
pub const SERVE_DEFAULTS: &[(&str, &str)] = &[
    ("REPEAT_PERIOD", "200"),
    ("AUTH", "off"),
    ("MIN_POLL_INTERVAL_MS", "50"),
];

/// The one place the tests build a Config: DATABASE_URL, then `extra`, then `defaults`.
pub fn lookup(database_url: &str, defaults: &[(&str, &str)], extra: &[(&str, &str)]) -> Config {
    Config::from_lookup(|k| {
        if k == "DATABASE_URL" {
            return Some(database_url.to_string());
        }
        extra
            .iter()
            .chain(defaults)
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
    .expect("config")
}

/// Config for `db` with only `extra` set besides DATABASE_URL (every other setting at its
/// default), for tests that drive the engine directly.
pub fn config_with(db: &TestDb, extra: &[(&str, &str)]) -> Arc<Config> {
    Arc::new(lookup(&db.url, &[], extra))
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

/// A new Secrets Manager secret (moto) holding `value`; returns its ARN.
pub async fn new_secret(client: &aws_sdk_secretsmanager::Client, value: &str) -> String {
    client
        .create_secret()
        .name(format!(
            "bulk-export-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .secret_string(value)
        .send()
        .await
        .expect("create secret")
        .arn()
        .expect("arn")
        .to_string()
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkt-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `bulk-export serve` for a test, on a database it owns: its settings are [`SERVE_DEFAULTS`],
/// a temporary local directory for the files, and what `env` says;
/// `TestServer::on(db).env("AUTH", "smart").workers(1).start().await`.
pub struct TestServer {
    db: TestDb,
    env: Vec<(String, String)>,
    store: Option<(String, Arc<dyn ObjectStore>)>,
    workers: usize,
}

impl TestServer {
    pub fn on(db: TestDb) -> TestServer {
        TestServer {
            db,
            env: Vec::new(),
            store: None,
            workers: 2,
        }
    }

    /// A setting, as the environment variable of that name would give it.
    pub fn env(mut self, name: &str, value: &str) -> TestServer {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn envs(self, settings: &[(&str, &str)]) -> TestServer {
        settings.iter().fold(self, |s, (k, v)| s.env(k, v))
    }

    /// Export files to `store`, which `storage_path` (STORAGE_PATH) names.
    pub fn storage(mut self, storage_path: String, store: Arc<dyn ObjectStore>) -> TestServer {
        self.store = Some((storage_path, store));
        self
    }

    /// Exporter workers in the server (2 unless said).
    pub fn workers(mut self, workers: usize) -> TestServer {
        self.workers = workers;
        self
    }

    pub async fn start(self) -> Server {
        let (storage_path, store) = match self.store {
            Some(s) => s,
            None => {
                let dir = temp_dir();
                let store: Arc<dyn ObjectStore> =
                    Arc::new(LocalStore::new(dir.clone()).expect("store"));
                (dir.display().to_string(), store)
            }
        };
        let mut extra: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        extra.push(("STORAGE_PATH", &storage_path));
        let config = lookup(&self.db.url, SERVE_DEFAULTS, &extra);
        let pool = self.db.pool.clone();
        Server::start_with_workers(config, pool, store, self.workers)
            .await
            .owning(self.db)
    }
}

/// `bulk-export serve` in-process on an ephemeral port.
pub struct Server {
    pub base: String,
    pub state: AppState,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The database the server uses, when it owns it: dropped with the server.
    db: Option<TestDb>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// With two exporter workers, as `serve` has on a 2-core machine.
    pub async fn start(config: Config, pool: Pool, store: Arc<dyn ObjectStore>) -> Server {
        Server::start_with_workers(config, pool, store, 2).await
    }

    pub async fn start_with_workers(
        mut config: Config,
        pool: Pool,
        store: Arc<dyn ObjectStore>,
        workers: usize,
    ) -> Server {
        let (listener, addr) = shared::serve::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        shared::serve::default_base_url(&mut config, addr);
        let config = Arc::new(config);
        let wake = LocalQueue::default();
        let queue: Arc<dyn JobQueue> = Arc::new(wake.clone());
        let state = AppState {
            pool: pool.clone(),
            store: store.clone(),
            queue: queue.clone(),
            config: config.clone(),
        };
        let exporters = (0..workers)
            .map(|_| {
                let mut exporter =
                    Exporter::new(pool.clone(), store.clone(), queue.clone(), config.clone());
                exporter.retry_backoff = Duration::from_millis(50);
                exporter
            })
            .collect();
        let task = tokio::spawn(shared::serve::run(
            listener,
            state.clone(),
            exporters,
            wake,
            config.repeat_period,
        ));
        Server {
            base: format!("http://{addr}"),
            state,
            task,
            db: None,
        }
    }

    /// The server takes `db` along: the database lives (and is dropped) with the server.
    pub fn owning(mut self, db: TestDb) -> Server {
        self.db = Some(db);
        self
    }

    /// The database this server owns (see [`Server::owning`]).
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("a server started with .owning(db)")
    }
}

/// A file of tests/fixtures/auth: TEST-ONLY client keys (made by make-keys.py there).
pub fn auth_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name)
}

/// The public JWKS of the fixture keys (`rs384`, `es384`).
pub fn fixture_public_jwks() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(auth_fixture("public.jwks")).expect("jwks"))
        .expect("json")
}

/// Registers a SMART client with the fixture keys and these scopes.
pub async fn register_fixture_client(pool: &Pool, client_id: &str, scopes: &str) {
    shared::db::clients::insert_client(
        pool,
        &shared::db::clients::Client {
            client_id: client_id.into(),
            jwks: Some(fixture_public_jwks()),
            jwks_url: None,
            scopes: scopes.into(),
        },
    )
    .await
    .expect("register client");
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request (and, like
/// reqwest, drops it on redirects to another host).
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .expect("client")
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

/// An HTTP client that follows redirects (as bulk-data clients do) and sends no auth header.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A client that does not follow redirects, to inspect them.
pub fn http_client_no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Sends `request`, asserts `status` and a FHIR JSON body (`application/fhir+json`); the body.
pub async fn fhir_json(request: reqwest::RequestBuilder, status: u16) -> serde_json::Value {
    let resp = request.send().await.expect("request");
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    resp.json().await.expect("a JSON body")
}

/// Kicks off an export with the standard headers; returns the response.
pub async fn kickoff(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off request")
}

/// Polls a status URL until it stops answering 202; returns the final response.
pub async fn poll(
    client: &reqwest::Client,
    status_url: &str,
    timeout: Duration,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let resp = client.get(status_url).send().await.expect("status request");
        if resp.status() != 202 {
            return resp;
        }
        assert!(
            resp.headers().get("x-progress").is_some(),
            "202 status without X-Progress"
        );
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("retry-after")
            .parse()
            .expect("Retry-After is integer seconds");
        assert!(retry >= 1);
        assert!(
            std::time::Instant::now() < deadline,
            "export did not finish in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status URL of an accepted kick-off (asserts the 202 and its Content-Location).
pub async fn status_url_of(resp: reqwest::Response) -> String {
    let status = resp.status();
    let location = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(
        status,
        202,
        "kick-off accepted: {}",
        resp.text().await.unwrap_or_default()
    );
    location.expect("a 202 kick-off has a Content-Location")
}

/// The manifest of an accepted kick-off: polls its status URL until done, asserting the 200.
pub async fn manifest_of(
    client: &reqwest::Client,
    kickoff: reqwest::Response,
) -> serde_json::Value {
    let status_url = status_url_of(kickoff).await;
    let done = poll(client, &status_url, Duration::from_secs(60)).await;
    assert_eq!(done.status(), 200, "the export of {status_url} completes");
    done.json().await.expect("manifest")
}

/// Kicks off `url` (GET with the standard headers) and waits for its manifest: the one
/// "kick off → poll → manifest" of the tests.
pub async fn kick_off_and_wait(client: &reqwest::Client, url: &str) -> serde_json::Value {
    manifest_of(client, kickoff(client, url).await).await
}

/// The s3s-fs endpoint (an S3 server that checks SigV4 signatures, started by scripts/test.sh)
/// and the keys it was started with.
pub struct S3s {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn s3s() -> S3s {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests with scripts/test.sh, which installs and starts \
                 s3s-fs (an S3 server that checks signatures) for the presigned-URL tests"
            )
        })
    };
    S3s {
        endpoint: var("TEST_S3S_ENDPOINT_URL"),
        access_key: var("TEST_S3S_ACCESS_KEY"),
        secret_key: var("TEST_S3S_SECRET_KEY"),
    }
}

/// An S3 client for s3s-fs: its endpoint and keys, path-style addressing.
pub async fn s3s_client() -> aws_sdk_s3::Client {
    let s = s3s();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&s.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            s.access_key,
            s.secret_key,
            None,
            None,
            "s3s-fs",
        ))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A new bucket on s3s-fs (a directory under its root) with a random name.
pub async fn new_s3s_bucket() -> (aws_sdk_s3::Client, String) {
    let client = s3s_client().await;
    let bucket = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket on s3s-fs");
    (client, bucket)
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

/// Every line of every file of a manifest's `output`, as downloaded (following redirects).
pub async fn download_lines(client: &reqwest::Client, manifest: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in manifest["output"].as_array().expect("output") {
        let text = client
            .get(entry["url"].as_str().expect("url"))
            .send()
            .await
            .expect("download")
            .text()
            .await
            .expect("body");
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

/// Downloads every file of a manifest's `output` (following redirects, as a client would) and
/// returns resource counts per type, checking that each line's resourceType matches the entry.
pub async fn download_counts(
    client: &reqwest::Client,
    manifest: &serde_json::Value,
    key: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for entry in manifest[key].as_array().expect("array") {
        let t = entry["type"].as_str().expect("type");
        let url = entry["url"].as_str().expect("url");
        let resp = client
            .get(url)
            .header("Accept", "application/fhir+ndjson")
            .send()
            .await
            .expect("download");
        assert_eq!(resp.status(), 200, "download {url}");
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert!(
            ct.starts_with("application/fhir+ndjson"),
            "content type {ct}"
        );
        let text = resp.text().await.expect("body");
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("ndjson line is JSON");
            assert_eq!(v["resourceType"], t, "line type matches manifest entry");
            n += 1;
        }
        assert_eq!(
            n,
            entry["count"].as_u64().expect("count") as usize,
            "{url} count"
        );
        *out.entry(t.to_string()).or_default() += n;
    }
    out
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
        let name = format!("bulkt_{}", uuid::Uuid::new_v4().simple());
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
