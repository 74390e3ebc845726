//! `bulk-export serve` in a test: its settings, the TestServer builder, and the running Server.

use super::*;

/// `bulk-export serve` in-process over a generated data set of `patients` patients, with local
/// storage in a temp directory, authorization off and `extra` settings on top of [`config`]'s.
pub async fn local_server(patients: usize, extra: &[(&str, &str)]) -> (Server, data::DataSet) {
    let (db, data) = TestDb::with_generated(patients).await;
    (TestServer::on(db).envs(extra).start().await, data)
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
        let mut app = shared::serve::assemble(config, pool, store, workers, addr);
        for exporter in &mut app.exporters {
            exporter.retry_backoff = Duration::from_millis(50);
        }
        let state = app.state.clone();
        let task = tokio::spawn(shared::serve::run(listener, app));
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
