//! The composition root of the Lambda functions: one constructor per function, building only the
//! clients that function uses, as `infra/functions.json` declares them. The same file is what
//! template.yaml is checked against (`scripts/check-functions.py`): a function's IAM actions
//! and environment in the stack are exactly what it declares, and a client it does not declare
//! is never built (a call to it fails, and panics in debug builds: a missing declaration is a
//! bug to see in tests, not in production).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::Deserialize;
use uuid::Uuid;

use crate::config::Config;
use crate::db::{DbError, Pool};
use crate::queue::{JobQueue, QueueError};
use crate::storage::{Download, ObjectStore, ObjectWriter, StorageError};

/// What a function's handlers need, built once per cold start by [`state_for`] (or by `serve`
/// for all of them): only the clients the function declares are real.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub config: Arc<Config>,
}

/// Errors while wiring a function at cold start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the database schema is not up to date (pending: {0}); run `bulk-export migrate`")]
    SchemaOutdated(String),
}

impl AppState {
    /// The exporter engine over the same clients (the Lambda adapter sets its deadlines).
    pub fn exporter(&self) -> crate::export::engine::Exporter {
        crate::export::engine::Exporter::new(
            self.pool.clone(),
            self.store.clone(),
            self.queue.clone(),
            self.config.clone(),
        )
    }
}

/// infra/functions.json, compiled in.
const DECLARATION: &str = include_str!("../../infra/functions.json");

/// The Lambda functions of template.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Kickoff,
    Status,
    File,
    Token,
    /// Every HTTP route behind one function: the REST API front door (`ApiType=RestApi`, which
    /// LocalStack's community edition serves), where one proxy resource reaches the code.
    Api,
    Exporter,
    /// The custom resource that applies migrations during a deploy (shared::migrate_resource).
    Migrate,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Function::Kickoff,
        Function::Status,
        Function::File,
        Function::Token,
        Function::Api,
        Function::Exporter,
        Function::Migrate,
    ];

    /// Its key in infra/functions.json, its Handler in template.yaml (Lambda's `_HANDLER`, which
    /// the one binary runs as) and its `cargo lambda watch` binary.
    pub fn name(self) -> &'static str {
        match self {
            Function::Kickoff => "kickoff",
            Function::Status => "status",
            Function::File => "file",
            Function::Token => "token",
            Function::Api => "api",
            Function::Exporter => "exporter",
            Function::Migrate => "migrate",
        }
    }

    /// The function named `name` (a Handler value).
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What it declares.
    pub fn spec(self) -> &'static FunctionSpec {
        // The declaration is compiled in and parsed by a unit test: it cannot fail here.
        let declaration = declaration().expect("infra/functions.json is valid (unit-tested)");
        declaration
            .functions
            .get(self.name())
            .expect("every function is declared (unit-tested)")
    }
}

/// infra/functions.json, parsed.
#[derive(Debug, Deserialize)]
pub struct Declaration {
    /// The binary every function runs (template.yaml's BuildProperties.Binary).
    pub binary: String,
    /// Variables and actions of every function (the database address and credentials, logs).
    pub common_env: Vec<String>,
    pub common_actions: BTreeMap<String, ActionUse>,
    pub functions: BTreeMap<String, FunctionSpec>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionSpec {
    /// Its logical id in template.yaml.
    pub resource: String,
    /// The functions whose routes it answers (the api function); their environment and actions
    /// are merged into its own when the declaration is read.
    #[serde(default)]
    pub serves: Vec<String>,
    /// The HTTP routes it answers (`METHOD /pattern`, `{id}` a path segment): template.yaml's
    /// HttpApi events, and the route table (crate::http::routes); for a function that `serves`
    /// others, its REST API events (`ANY /{proxy+}`), which are not in the route table.
    pub routes: Vec<String>,
    /// Variables the stack passes it (besides `common_env`).
    pub env: Vec<String>,
    /// IAM actions its code calls: the template resource each acts on, and the caller.
    pub actions: BTreeMap<String, ActionUse>,
}

#[derive(Debug, Deserialize)]
pub struct ActionUse {
    /// Template resources (or parameters naming them) it acts on.
    pub on: Vec<String>,
    pub by: String,
}

impl FunctionSpec {
    fn may(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    fn may_on(&self, action: &str, resource: &str) -> bool {
        self.actions
            .get(action)
            .is_some_and(|u| u.on.iter().any(|o| o == resource))
    }

    /// Writes export files (and deletes expired ones).
    pub fn writes_storage(&self) -> bool {
        self.may("s3:PutObject")
    }

    /// Uses the export storage at all (writes, or presigns downloads).
    pub fn uses_storage(&self) -> bool {
        self.actions.keys().any(|a| a.starts_with("s3:"))
    }

    /// Sends exporter wake-ups.
    pub fn sends_wake_ups(&self) -> bool {
        self.may("sqs:SendMessage")
    }

    /// Reads the token signing key (from Secrets Manager in AWS): it checks or issues tokens.
    pub fn reads_signing_key(&self) -> bool {
        self.may_on("secretsmanager:GetSecretValue", "TokenSigningSecret")
    }
}

/// infra/functions.json that does not parse or names what does not exist.
#[derive(Debug, Clone, thiserror::Error)]
#[error("infra/functions.json: {0}")]
pub struct DeclarationError(String);

/// The declaration, parsed once, each function that `serves` others with their environment
/// and actions merged into its own.
pub fn declaration() -> Result<&'static Declaration, DeclarationError> {
    static PARSED: OnceLock<Result<Declaration, DeclarationError>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            let mut d: Declaration =
                serde_json::from_str(DECLARATION).map_err(|e| DeclarationError(e.to_string()))?;
            d.merge_served()?;
            Ok(d)
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Declaration {
    /// Gives each function that `serves` others their environment and actions.
    fn merge_served(&mut self) -> Result<(), DeclarationError> {
        let servers: Vec<String> = self
            .functions
            .iter()
            .filter(|(_, f)| !f.serves.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for server in servers {
            let mut env = Vec::new();
            let mut actions: BTreeMap<String, ActionUse> = BTreeMap::new();
            for served in &self.functions[&server].serves {
                let f = self
                    .functions
                    .get(served)
                    .ok_or_else(|| DeclarationError(format!("{server} serves unknown {served}")))?;
                if !f.serves.is_empty() {
                    return Err(DeclarationError(format!("{served} serves others too")));
                }
                for v in &f.env {
                    if !env.contains(v) {
                        env.push(v.clone());
                    }
                }
                for (action, used) in &f.actions {
                    let merged = actions.entry(action.clone()).or_insert_with(|| ActionUse {
                        on: Vec::new(),
                        by: used.by.clone(),
                    });
                    for on in &used.on {
                        if !merged.on.contains(on) {
                            merged.on.push(on.clone());
                        }
                    }
                }
            }
            let f = self.functions.get_mut(&server).expect("listed above");
            f.env.extend(env);
            f.actions.extend(actions);
        }
        Ok(())
    }
}

/// The state of `function` at cold start: configuration from the environment, with the database
/// credentials from Secrets Manager when DATABASE_SECRET names them; the signing key
/// (from TOKEN_SIGNING_KEY or Secrets Manager) if it checks tokens; the pool, refused on a
/// database with pending migrations; storage and queue clients only if it declares them.
pub async fn state_for(function: Function) -> Result<AppState, StartupError> {
    let mut config = Config::from_env()?;
    crate::db::credentials::resolve(&mut config, None).await?;
    let spec = function.spec();
    if spec.reads_signing_key() {
        crate::auth::secret::resolve_signing_key(&mut config, None).await?;
    }
    build(function, config).await
}

/// [`state_for`] with a configuration at hand.
pub async fn build(function: Function, config: Config) -> Result<AppState, StartupError> {
    let spec = function.spec();
    let pool = crate::db::pool(&config.database_url, config.database_pool_size.unwrap_or(4))?;
    let pending = crate::db::pending_migrations(&pool).await?;
    if !pending.is_empty() {
        return Err(StartupError::SchemaOutdated(pending.join(", ")));
    }
    let store: Arc<dyn ObjectStore> = if spec.uses_storage() {
        crate::storage::from_config(&config).await?
    } else {
        Arc::new(NotDeclared(function))
    };
    let queue: Arc<dyn JobQueue> = if spec.sends_wake_ups() {
        crate::queue::from_config(config.queue_url.as_deref()).await
    } else {
        Arc::new(NotDeclared(function))
    };
    Ok(assemble(function, Arc::new(config), pool, store, queue))
}

/// The state of `function` from clients built elsewhere (tests pass their own): the storage and
/// queue it does not declare are replaced by clients that refuse every call.
pub fn assemble(
    function: Function,
    config: Arc<Config>,
    pool: crate::db::Pool,
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
) -> AppState {
    let spec = function.spec();
    AppState {
        pool,
        store: if spec.uses_storage() {
            store
        } else {
            Arc::new(NotDeclared(function))
        },
        queue: if spec.sends_wake_ups() {
            queue
        } else {
            Arc::new(NotDeclared(function))
        },
        config,
    }
}

/// The client of something a function does not declare: every call fails (and panics in debug
/// builds, so that a test shows the missing declaration).
struct NotDeclared(Function);

impl NotDeclared {
    fn refuse(&self, what: &str) -> String {
        let message = format!(
            "the {} function does not declare {what} in infra/functions.json (nor has the IAM \
             permission in template.yaml)",
            self.0.name()
        );
        if cfg!(debug_assertions) {
            panic!("{message}");
        }
        message
    }
}

#[async_trait]
impl ObjectStore for NotDeclared {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Err(self.storage_error("s3:PutObject", key))
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        Err(self.storage_error("s3:DeleteObject", prefix))
    }
    async fn download(
        &self,
        key: &str,
        _ttl: std::time::Duration,
    ) -> Result<Download, StorageError> {
        Err(self.storage_error("s3:GetObject", key))
    }
    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        Err(self.storage_error("s3:GetObject", key))
    }
}

impl NotDeclared {
    fn storage_error(&self, action: &'static str, key: &str) -> StorageError {
        StorageError::NotDeclared {
            action,
            key: key.to_string(),
            message: self.refuse(action),
        }
    }
}

#[async_trait]
impl JobQueue for NotDeclared {
    async fn send(&self, job_id: Uuid) -> Result<(), QueueError> {
        Err(QueueError {
            job_id,
            queue: "(none)".into(),
            message: self.refuse("sqs:SendMessage"),
        })
    }
}

#[cfg(test)]
mod tests;
