//! Postgres: connection pool, migrations, and one module per table.

pub mod clients;
pub mod credentials;
pub mod files;
pub mod jobs;
pub mod named;
pub mod planning;
pub mod polls;
pub mod reads;
pub mod resources;
pub mod tls;
pub mod work_items;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::NoTls;

pub type Pool = deadpool_postgres::Pool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    #[error("database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {}", crate::error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A column holds a value this version has no name for (a newer version wrote it).
    #[error("database row: {column} {value:?} is not known to this version")]
    UnknownValue { column: &'static str, value: String },
    /// A statement names a parameter it is not given (see `named`).
    #[error("statement parameter :{0} is not bound")]
    Unbound(String),
    /// Stored JSON (a job's parameters, a resource) that does not read or write back.
    #[error("database row: stored JSON")]
    Json(#[from] serde_json::Error),
    /// A value that could not be encoded for Postgres (a binary COPY row).
    #[error("encoding a value for the database: {0}")]
    Encode(Box<dyn std::error::Error + Sync + Send>),
    #[error("migration {name}: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Migrations, applied in order by `bulk-export migrate`, each in its own transaction.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../../infra/migrations/0001_initial.sql"),
    ),
    (
        "0002_status_polling",
        include_str!("../../../infra/migrations/0002_status_polling.sql"),
    ),
    (
        "0003_provenance_targets",
        include_str!("../../../infra/migrations/0003_provenance_targets.sql"),
    ),
    (
        "0004_auth",
        include_str!("../../../infra/migrations/0004_auth.sql"),
    ),
    (
        "0005_poll_table",
        include_str!("../../../infra/migrations/0005_poll_table.sql"),
    ),
    (
        "0006_gzip_copies",
        include_str!("../../../infra/migrations/0006_gzip_copies.sql"),
    ),
    (
        "0007_public_error",
        include_str!("../../../infra/migrations/0007_public_error.sql"),
    ),
    (
        "0008_exact_reads",
        include_str!("../../../infra/migrations/0008_exact_reads.sql"),
    ),
    (
        "0009_work_item_fanout",
        include_str!("../../../infra/migrations/0009_work_item_fanout.sql"),
    ),
    (
        "0010_cheaper_loads",
        include_str!("../../../infra/migrations/0010_cheaper_loads.sql"),
    ),
    (
        "0011_job_refs",
        include_str!("../../../infra/migrations/0011_job_refs.sql"),
    ),
    (
        "0012_deleted_index",
        include_str!("../../../infra/migrations/0012_deleted_index.sql"),
    ),
    (
        "0013_load_rate",
        include_str!("../../../infra/migrations/0013_load_rate.sql"),
    ),
    (
        "0014_compartment_scan",
        include_str!("../../../infra/migrations/0014_compartment_scan.sql"),
    ),
    (
        "0015_bytewise_keys",
        include_str!("../../../infra/migrations/0015_bytewise_keys.sql"),
    ),
    (
        "0016_storage_outage",
        include_str!("../../../infra/migrations/0016_storage_outage.sql"),
    ),
];

/// A connection pool for DATABASE_URL, over TLS when its `sslmode` asks for it (see [`tls`]).
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, DbError> {
    let (url, tls) = tls::from_url(database_url)?;
    let mut pg =
        tokio_postgres::Config::from_str(&url).map_err(|e| DbError::Config(e.to_string()))?;
    // A database that does not answer costs a bounded wait: connecting, and (through TCP
    // keepalives) a connection whose peer vanished mid-query.
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(10));
    }
    pg.keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30))
        .keepalives_interval(std::time::Duration::from_secs(10))
        .keepalives_retries(3);
    let config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        tls::TlsChoice::Plain => Manager::from_config(pg, NoTls, config),
        tls::TlsChoice::Tls(connector) => Manager::from_config(pg, connector, config),
    };
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(15)))
        .recycle_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Applies pending migrations; returns the names applied now. Safe to run concurrently (an
/// advisory lock serialises runners).
pub async fn migrate(pool: &Pool) -> Result<Vec<&'static str>, DbError> {
    let mut client = pool.get().await?;
    client
        .batch_execute(
            "SET client_min_messages = warning;
             SELECT pg_advisory_lock(7417001);
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let result = apply_pending(&mut client).await;
    // The connection goes back to the pool: restore the default notice level.
    client
        .batch_execute("SELECT pg_advisory_unlock(7417001); RESET client_min_messages")
        .await?;
    result
}

async fn applied_migrations(client: &deadpool_postgres::Object) -> Result<Vec<String>, DbError> {
    Ok(client
        .query("SELECT name FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn apply_pending(
    client: &mut deadpool_postgres::Object,
) -> Result<Vec<&'static str>, DbError> {
    let applied = applied_migrations(client).await?;
    let mut done = Vec::new();
    for (name, sql) in MIGRATIONS {
        if applied.iter().any(|a| a == name) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|source| DbError::Migration { name, source })?;
        tx.execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[name])
            .await?;
        tx.commit().await?;
        done.push(*name);
    }
    Ok(done)
}

/// Whether every migration has been applied (handlers refuse to run on an old schema).
pub async fn pending_migrations(pool: &Pool) -> Result<Vec<&'static str>, DbError> {
    let client = pool.get().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(MIGRATIONS.iter().map(|(n, _)| *n).collect());
    }
    let applied = applied_migrations(&client).await?;
    Ok(MIGRATIONS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !applied.iter().any(|a| a == n))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// template.yaml's migrations resource names this version's newest migration: a deploy with
    /// a new one sends the Update that applies it.
    #[test]
    fn the_stack_applies_the_newest_migration_on_deploy() {
        let template = include_str!("../../../template.yaml");
        let newest = MIGRATIONS.last().map(|(name, _)| *name).unwrap_or_default();
        assert!(
            template.contains(&format!("SchemaVersion: {newest}\n")),
            "template.yaml's DatabaseMigrations.SchemaVersion must be {newest}"
        );
    }
}
