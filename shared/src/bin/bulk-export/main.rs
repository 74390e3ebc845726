//! `bulk-export`: migrate the database, load FHIR data, and serve every route locally.
//! Configured by the same environment variables as the Lambda functions (`bulk-export env`).
//!
//! One module per command; this file parses the command line, opens the database for the
//! commands that need it, and reports a failed command (errors.rs).

use std::process::ExitCode;

mod check;
mod clients;
mod delete;
mod env;
mod errors;
mod jobs;
mod load;
mod migrate;
mod serve;

/// `bulk-export` (load and serve) allocates with mimalloc: glibc's allocator cost a third of the
/// loader's CPU (`_int_malloc`, `_int_free`, `malloc_consolidate` and arena locks between the
/// parsing and writing threads, in `perf`). The choice is the binary's: the library and the
/// Lambda functions keep the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::bail;
use clap::{Parser, Subcommand};
use shared::{db, Config};

#[derive(Parser)]
#[command(
    name = "bulk-export",
    version,
    about = "FHIR Bulk Data $export service",
    after_help = "Each command's --help lists the environment variables it reads (DATABASE_URL, ...); \
                  `bulk-export env` describes every one with its default. \
                  Logging: RUST_LOG (default info), LOG_FORMAT=json, NO_COLOR."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    #[command(after_help = env::DATABASE)]
    Migrate,
    /// Load ndjson files, folders of them, or FHIR Bundle JSON files.
    #[command(after_help = env::DATABASE)]
    Load(load::Args),
    /// Delete resources (tombstones: `_since` exports list them in deleted[]).
    #[command(after_help = env::DATABASE)]
    Delete(delete::Args),
    /// Check every stored resource: its text must be a JSON resource with its row's
    /// resourceType and id (rows stored before that check existed were never checked). When all
    /// pass, the check is recorded as holding for every row; otherwise each failing row is
    /// printed (exit status 2) and nothing changes, unless --repair.
    #[command(after_help = env::DATABASE)]
    Check(check::Args),
    /// Serve every HTTP route and run the exporter in this process.
    #[command(after_help = env::serve_help())]
    Serve(serve::Args),
    /// List export jobs, show one (state, client, progress, counts, duration and the internal
    /// error clients are not told), or cancel or retry one.
    #[command(after_help = env::DATABASE)]
    Jobs(jobs::Args),
    /// Register, list or remove SMART Backend Services clients.
    Client {
        #[command(subcommand)]
        command: clients::Command,
    },
    /// Describe every environment variable the service and its functions read, with its
    /// default (the README's table, from the same source).
    Env(env::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init(shared::config::LogFormat::from_env());
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // One line per distinct cause, with what to do where we know it; no backtrace (an
            // error here is about the setup, not a bug; RUST_BACKTRACE is often set anyway).
            let url = std::env::var("DATABASE_URL").ok();
            eprintln!("error: {}", errors::describe(&e, url.as_deref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate => migrate::run().await,
        Command::Load(args) => load::run(args).await,
        Command::Delete(args) => delete::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Jobs(args) => jobs::run(args).await,
        Command::Client { command } => clients::run(command).await,
        Command::Env(args) => Ok(env::run(args)),
    }
}

/// The configuration (with DATABASE_SECRET's credentials put into DATABASE_URL, as the
/// functions do) and a pool of `size(&config)` connections to its database.
async fn connect(size: impl FnOnce(&Config) -> usize) -> anyhow::Result<(Config, db::Pool)> {
    let mut config = Config::from_env()?;
    db::credentials::resolve(&mut config, None).await?;
    let pool = db::pool(&config.database_url, size(&config))?;
    Ok((config, pool))
}

/// [`connect`] to a database whose schema is up to date (every command but `migrate`).
async fn open_database(size: impl FnOnce(&Config) -> usize) -> anyhow::Result<(Config, db::Pool)> {
    let (config, pool) = connect(size).await?;
    let pending = db::pending_migrations(&pool).await?;
    if !pending.is_empty() {
        bail!(
            "the database schema is not up to date (pending: {}); run `bulk-export migrate` first",
            pending.join(", ")
        );
    }
    Ok((config, pool))
}

/// The pool size of a command that uses few connections: DATABASE_POOL_SIZE, or 8.
fn default_pool_size(config: &Config) -> usize {
    config.database_pool_size.unwrap_or(8)
}
