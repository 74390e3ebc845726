//! `bulk-export`: migrate the database, load FHIR data, and serve every route locally.
//! Configured by the same environment variables as the Lambda functions.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use shared::export::engine::Exporter;
use shared::http::AppState;
use shared::queue::LocalQueue;
use shared::{db, load, serve, storage, Config};

#[derive(Parser)]
#[command(
    name = "bulk-export",
    version,
    about = "FHIR Bulk Data $export service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Load ndjson files, folders of them, or FHIR Bundle JSON files.
    Load {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Delete resources (tombstones: `_since` exports list them in deleted[]).
    Delete {
        /// `Type/id` of each resource to delete.
        #[arg(required = true)]
        resources: Vec<String>,
    },
    /// Serve every HTTP route and run the exporter in this process.
    Serve {
        #[arg(long, default_value_t = 8080, env = "PORT")]
        port: u16,
        #[arg(long, default_value = "127.0.0.1", env = "HOST")]
        host: IpAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = Cli::parse();
    let config = Config::from_env()?;
    let pool = db::pool(&config.database_url, 8)?;
    match cli.command {
        Command::Migrate => {
            let applied = db::migrate(&pool).await.context("migrating the database")?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                println!("applied migrations: {}", applied.join(", "));
            }
        }
        Command::Load { paths } => {
            require_schema(&pool).await?;
            let started = std::time::Instant::now();
            let report = load::load_paths(&pool, &paths, |n| {
                let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprint!("\rloaded {n} resources ({rate:.0}/s)");
                let _ = std::io::stderr().flush();
            })
            .await?;
            eprintln!();
            for r in &report.rejected {
                eprintln!("rejected {r}");
            }
            println!(
                "loaded {} resources from {} files in {:.1}s; {} deleted; {} rejected",
                report.loaded,
                report.files,
                started.elapsed().as_secs_f64(),
                report.deleted,
                report.rejected.len()
            );
            if !report.rejected.is_empty() {
                std::process::exit(2);
            }
        }
        Command::Delete { resources } => {
            require_schema(&pool).await?;
            let keys = resources
                .iter()
                .map(|r| load::parse_type_id(r).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let n = db::resources::delete_resources(&pool, &keys).await?;
            println!("deleted {n} of {} resources", keys.len());
        }
        Command::Serve { port, host } => {
            require_schema(&pool).await?;
            let config = Arc::new(config);
            let store = storage::from_config(&config.storage_path).await?;
            let wake = LocalQueue::default();
            let state = AppState {
                pool: pool.clone(),
                store: store.clone(),
                queue: Arc::new(wake.clone()),
                config: config.clone(),
            };
            let exporter = Exporter::new(pool, store, Arc::new(wake.clone()), config.clone());
            let (listener, addr) = serve::bind(SocketAddr::new(host, port)).await?;
            let base = config
                .public_base_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            println!("FHIR base URL: {base}");
            println!(
                "  kick-off: {base}/$export  {base}/Patient/$export  {base}/Group/{{id}}/$export"
            );
            let _ = std::io::stdout().flush();
            serve::run(listener, state, exporter, wake, config.repeat_period).await?;
        }
    }
    Ok(())
}

async fn require_schema(pool: &db::Pool) -> anyhow::Result<()> {
    let pending = db::pending_migrations(pool)
        .await
        .context("connecting to the database (DATABASE_URL)")?;
    if !pending.is_empty() {
        bail!(
            "the database schema is not up to date (pending: {}); run `bulk-export migrate` first",
            pending.join(", ")
        );
    }
    Ok(())
}
