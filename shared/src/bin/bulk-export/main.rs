//! `bulk-export`: migrate the database, load FHIR data, and serve every route locally.
//! Configured by the same environment variables as the Lambda functions.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use std::process::ExitCode;

mod clients;
mod jobs;

/// `bulk-export` (load and serve) allocates with mimalloc: glibc's allocator cost a third of the
/// loader's CPU (`_int_malloc`, `_int_free`, `malloc_consolidate` and arena locks between the
/// parsing and writing threads, in `perf`). The choice is the binary's: the library and the
/// Lambda functions keep the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use shared::app::AppState;
use shared::config::AuthMode;
use shared::export::engine::Exporter;
use shared::queue::LocalQueue;
use shared::{auth, db, load, serve, storage, Config};

#[derive(Parser)]
#[command(
    name = "bulk-export",
    version,
    about = "FHIR Bulk Data $export service",
    after_help = "Each command's --help lists the environment variables it reads (DATABASE_URL, ...). \
                  Logging: RUST_LOG (default info), LOG_FORMAT=json, NO_COLOR."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    #[command(after_help = ENV_DATABASE)]
    Migrate,
    /// Load ndjson files, folders of them, or FHIR Bundle JSON files.
    #[command(after_help = ENV_DATABASE)]
    Load {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check every resource as a load would, without a database: print what it would
        /// refuse, store nothing (exit status 2 if anything would be refused).
        #[arg(long)]
        check: bool,
        /// Database connections storing at once (default: the number of cores here); each
        /// keeps about one of the database server's cores busy.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        writers: Option<u16>,
        /// The largest resource accepted, in MiB: a longer line (or `.json` file) is refused
        /// with its file and line, without being read into memory. Loading takes about twice
        /// the largest resource in memory, and exporting it about three times.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
        max_resource_mb: u32,
    },
    /// Delete resources (tombstones: `_since` exports list them in deleted[]).
    #[command(after_help = ENV_DATABASE)]
    Delete {
        /// `Type/id` of each resource to delete.
        #[arg(required = true)]
        resources: Vec<String>,
    },
    /// Check every stored resource: its text must be a JSON resource with its row's
    /// resourceType and id (rows stored before that check existed were never checked). When all
    /// pass, the check is recorded as holding for every row; otherwise each failing row is
    /// printed (exit status 2) and nothing changes, unless --repair.
    #[command(after_help = ENV_DATABASE)]
    Check {
        /// Remove the failing rows (with their compartment, reference and Provenance rows),
        /// printing each, then record the check as holding. Load a correct version of each
        /// afterwards if it should exist.
        #[arg(long)]
        repair: bool,
    },
    /// Serve every HTTP route and run the exporter in this process.
    #[command(after_help = ENV_SERVE)]
    Serve {
        #[arg(long, default_value_t = 8080, env = "PORT")]
        port: u16,
        #[arg(long, default_value = "127.0.0.1", env = "HOST")]
        host: IpAddr,
        /// No authorization at all (one machine only): same as AUTH=off.
        #[arg(long)]
        insecure: bool,
        /// Exporters run in this process; they share every export's work items (default: the
        /// number of cores).
        #[arg(long, env = "EXPORT_WORKERS")]
        workers: Option<usize>,
    },
    /// List export jobs, show one (state, client, progress, counts, duration and the internal
    /// error clients are not told), or cancel or retry one.
    #[command(after_help = ENV_DATABASE)]
    Jobs {
        /// A job id: show this job; without: list the newest jobs.
        id: Option<uuid::Uuid>,
        /// How many jobs to list.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Cancel the job (a running one stops at its exporters' next lease check; its files
        /// are deleted), as a client's DELETE would.
        #[arg(long, requires = "id", conflicts_with = "retry")]
        cancel: bool,
        /// Export a Failed job again from where it stopped (same transaction time; finished
        /// parts kept), before its files expire.
        #[arg(long, requires = "id")]
        retry: bool,
    },
    /// Register, list or remove SMART Backend Services clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client (or replace its keys and scopes); prints its client id.
    #[command(after_help = ENV_DATABASE)]
    Add {
        /// The client's public keys as a JWKS file (RS384 or ES384 keys).
        #[arg(
            long,
            conflicts_with = "jwks_url",
            required_unless_present = "jwks_url"
        )]
        jwks: Option<PathBuf>,
        /// Or the https URL the client publishes its JWKS at (fetched and cached per
        /// Cache-Control); not on this machine nor a link-local address.
        #[arg(long)]
        jwks_url: Option<String>,
        /// Development only: accept an http:// JWKS URL, or one on this machine (localhost,
        /// 127.0.0.0/8, ::1) or a link-local address.
        #[arg(long, requires = "jwks_url")]
        allow_insecure_jwks_url: bool,
        /// Scopes the client may be granted (space- or comma-separated).
        #[arg(long, default_value = "system/*.read")]
        scope: Vec<String>,
        /// The client id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// List registered clients.
    #[command(after_help = ENV_DATABASE)]
    List,
    /// Make a new ES384 client key pair in DIR: private.pem (PKCS#8; signs assertions, for
    /// smart-fetch too), private.jwks (smart-fetch), private.jwk.json (one JWK: bulk-data-client's
    /// privateKey) and public.jwks (to register). No database needed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Key id written into the JWKs (default: the key's RFC 7638 thumbprint, which is what
        /// smart-fetch sends when given private.pem; another kid breaks that).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Get an access token from a token endpoint with a client key and print it (what a SMART
    /// Backend Services client does). No database needed.
    Token {
        #[arg(long)]
        client_id: String,
        /// PEM private key: P-384 → ES384 (PKCS#8 or SEC1 `BEGIN EC PRIVATE KEY`), RSA → RS384.
        #[arg(long)]
        key: PathBuf,
        /// The token endpoint, e.g. http://127.0.0.1:8080/auth/token.
        #[arg(long)]
        token_url: String,
        #[arg(long, default_value = "system/*.read")]
        scope: String,
        #[arg(long)]
        kid: Option<String>,
    },
    /// Remove a client (its access tokens stop working at once).
    #[command(after_help = ENV_DATABASE)]
    Remove { id: String },
}

const ENV_DATABASE: &str = "Environment:
  DATABASE_URL  Postgres URL (required), e.g. postgres://user:pass@127.0.0.1:5432/fhir_bulk;
                TLS: ?sslmode=require|verify-ca|verify-full&sslrootcert=/path/ca.pem
  DATABASE_SECRET  or: a Secrets Manager secret ({\"username\", \"password\"}) whose
                credentials go into DATABASE_URL (then without a password), as in AWS
  RUST_LOG, LOG_FORMAT=json, NO_COLOR  logging";

const ENV_SERVE: &str = "Environment (README.md, Configuration, has the defaults):
  DATABASE_URL            Postgres URL (required)
  STORAGE_PATH            ./exports (default), another directory, or s3://bucket/prefix
  PORT, HOST              what --port and --host default to
  PUBLIC_BASE_URL         the FHIR base URL clients use
  AUTH                    smart (default) or off (same as --insecure)
  TOKEN_SIGNING_KEY, TOKEN_SIGNING_KEY_SECRET, ACCESS_TOKEN_TTL_SECONDS
  EXPORT_WORKERS          what --workers defaults to (default: the number of cores)
  REPEAT_PERIOD, ADDITIONAL_RESOURCES, MAX_FILE_BYTES, EXPORT_ITEM_BYTES, EXPORT_SCAN_PERCENT,
  EXPORT_SCAN_MAX_PATIENTS, PRESIGN_TTL_SECONDS,
  JOB_RETENTION_HOURS, CANCELLED_STATUS_CODE, LEASE_SECONDS, MAX_ATTEMPTS, STORAGE_OUTAGE_SECONDS,
  RETRY_AFTER_SECONDS, MIN_POLL_INTERVAL_MS, MAX_CONCURRENT_EXPORTS, S3_GZIP_COPIES,
  S3_CONNECT_TIMEOUT_SECONDS, S3_FIRST_BYTE_TIMEOUT_SECONDS, S3_MIN_UPLOAD_RATE_BYTES
  AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...  S3 storage (standard AWS SDK variables)
  RUST_LOG, LOG_FORMAT=json, NO_COLOR  logging";

/// Prints a load's or check's report; exit status 2 when lines were rejected.
fn print_report(
    report: &load::LoadReport,
    started: std::time::Instant,
    loaded: &str,
    deleted: &str,
) -> ExitCode {
    for r in &report.rejected {
        eprintln!("rejected {r}");
    }
    println!(
        "{loaded} {} resources from {} files in {:.1}s; {} {deleted}; {} rejected",
        report.loaded,
        report.files,
        started.elapsed().as_secs_f64(),
        report.deleted,
        report.rejected.len()
    );
    if report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
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
            eprintln!("error: {}", shared::cli::describe(&e, url.as_deref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Client-side helpers need neither the database nor the server's configuration.
    let cli = match cli.command {
        Command::Client {
            command: ClientCommand::Keygen { out, kid },
        } => return clients::keygen(&out, kid.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Client {
            command:
                ClientCommand::Token {
                    client_id,
                    key,
                    token_url,
                    scope,
                    kid,
                },
        } => {
            let pem = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let assertion =
                auth::keys::client_assertion(&pem, &client_id, &token_url, kid.as_deref())
                    .map_err(anyhow::Error::msg)?;
            let body = match auth::keys::request_token(&token_url, &assertion, &scope).await {
                Ok(body) => body,
                Err(e) => bail!("{e}{}", clients::token_url_hint(&token_url).await),
            };
            eprintln!(
                "granted {} for {} s",
                body["scope"].as_str().unwrap_or("?"),
                body["expires_in"]
            );
            println!("{}", body["access_token"].as_str().unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Load {
            paths,
            check: true,
            max_resource_mb,
            ..
        } => {
            let started = std::time::Instant::now();
            let options = load::LoadOptions {
                max_resource_bytes: (max_resource_mb as usize) << 20,
                ..Default::default()
            };
            let report = load::check_paths(&paths, &options).await?;
            return Ok(print_report(
                &report,
                started,
                "checked",
                "would be deleted",
            ));
        }
        other => Cli { command: other },
    };
    let mut config = Config::from_env()?;
    // DATABASE_SECRET: the user name and password from Secrets Manager, as the functions do.
    shared::db::credentials::resolve(&mut config, None).await?;
    // serve: the HTTP routes' connections plus about three per exporter worker (a page read
    // ahead, a lease renewal, a checkpoint).
    let pool_size = match &cli.command {
        // A load needs a connection per writer, whatever DATABASE_POOL_SIZE says.
        Command::Load { writers, .. } => config
            .database_pool_size
            .unwrap_or(0)
            .max(writers.map_or_else(load::writer_count, usize::from) + load::ANALYZE_CONNECTIONS),
        Command::Serve { workers, .. } => config
            .database_pool_size
            .unwrap_or(8 + 3 * serve::worker_count(*workers)),
        _ => config.database_pool_size.unwrap_or(8),
    };
    let pool = db::pool(&config.database_url, pool_size)?;
    match cli.command {
        Command::Migrate => {
            let applied = db::migrate(&pool).await?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                println!("applied migrations: {}", applied.join(", "));
            }
        }
        Command::Load {
            paths,
            writers,
            max_resource_mb,
            ..
        } => {
            require_schema(&pool).await?;
            let started = std::time::Instant::now();
            let mut progress = shared::telemetry::Progress::new();
            let options = load::LoadOptions {
                writers: writers.map_or_else(load::writer_count, usize::from),
                max_resource_bytes: (max_resource_mb as usize) << 20,
                ..Default::default()
            };
            let report = load::load_paths_with(&pool, &paths, &options, |n| {
                let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                progress.update(&format!("loaded {n} resources ({rate:.0}/s)"));
            })
            .await;
            progress.finish();
            return Ok(print_report(&report?, started, "loaded", "deleted"));
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
        Command::Check { repair } => {
            require_schema(&pool).await?;
            let check = db::resources::check_stored_keys(&pool, 1000, repair).await?;
            if check.removed {
                for (t, id) in &check.bad {
                    println!(
                        "{t}/{id}: removed (not a JSON resource with this resourceType and id)"
                    );
                }
                let more = check.bad_count - check.bad.len() as i64;
                if more > 0 {
                    println!("... and {more} more");
                }
                println!(
                    "removed {} row(s); every stored resource now has its key's resourceType and id",
                    check.bad_count
                );
            } else if check.validated {
                println!("every stored resource has its key's resourceType and id");
            } else {
                for (t, id) in &check.bad {
                    println!("{t}/{id}: not a JSON resource with this resourceType and id");
                }
                let more = check.bad_count - check.bad.len() as i64;
                if more > 0 {
                    println!("... and {more} more");
                }
                eprintln!(
                    "{} stored row(s) fail the key check; an export copies them as they are. \
                     Store a correct version of each (bulk-export load) or delete the row \
                     (bulk-export check --repair removes every failing row), then run \
                     bulk-export check again.",
                    check.bad_count
                );
                return Ok(ExitCode::from(2));
            }
        }
        Command::Client { command } => {
            require_schema(&pool).await?;
            clients::client_command(&pool, command).await?;
        }
        Command::Jobs {
            id,
            limit,
            cancel,
            retry,
        } => {
            require_schema(&pool).await?;
            match id {
                Some(id) if cancel => {
                    if !db::jobs::request_cancellation(&pool, id).await? {
                        bail!("job {id} is unknown, already cancelled or deleted");
                    }
                    println!("job {id}: cancellation requested (an exporter finishes it)");
                }
                Some(id) if retry => {
                    if !db::jobs::retry_failed(&pool, id).await? {
                        bail!("job {id} is not a Failed job whose files are still kept");
                    }
                    println!("job {id}: queued again (an exporter resumes it)");
                }
                _ => jobs::jobs_command(&pool, id, limit).await?,
            }
        }
        Command::Serve {
            port,
            host,
            insecure,
            workers,
        } => {
            require_schema(&pool).await?;
            let mut config = config;
            if insecure {
                config.auth = AuthMode::Off;
            }
            match &config.auth {
                AuthMode::Off => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "WARNING: authorization is off (--insecure or AUTH=off): anyone who can reach this port can export every record"
                    );
                }
                AuthMode::Smart { signing_key: None } => {
                    // One process signs and checks its own tokens: a random key will do; tokens
                    // end with the process.
                    config.auth = AuthMode::Smart {
                        signing_key: Some(auth::random_key()),
                    };
                    let _ = writeln!(std::io::stderr(), "authorization: SMART Backend Services (random token signing key; set TOKEN_SIGNING_KEY to keep tokens across restarts)");
                }
                AuthMode::Smart { .. } => {
                    let _ = writeln!(std::io::stderr(), "authorization: SMART Backend Services");
                }
            }
            let (listener, addr) = serve::bind(SocketAddr::new(host, port))
                .await
                .map_err(|e| anyhow::anyhow!(shared::cli::bind_error(&e, host, port)))?;
            if let Some(warning) = serve::default_base_url(&mut config, addr) {
                let _ = writeln!(std::io::stderr(), "WARNING: {warning}");
            }
            let config = Arc::new(config);
            let store = storage::from_config(&config).await?;
            let wake = LocalQueue::default();
            let state = AppState {
                pool: pool.clone(),
                store: store.clone(),
                queue: Arc::new(wake.clone()),
                config: config.clone(),
            };
            // Named after host, port and number: a restarted serve resumes its own work at once.
            let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            let exporters: Vec<Exporter> = (1..=serve::worker_count(workers))
                .map(|n| {
                    Exporter::new(
                        pool.clone(),
                        store.clone(),
                        Arc::new(wake.clone()),
                        config.clone(),
                    )
                    .with_owner(format!("serve@{host_name}:{}#{n}", addr.port()))
                })
                .collect();
            let base = config.public_base_url.clone().unwrap_or_default();
            // A closed stdout (`serve | head -1`, a supervisor that reads one line) must not
            // take the server down: these writes ignore errors, unlike println!.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "FHIR base URL: {base}");
            let _ = writeln!(
                out,
                "  kick-off: {base}/$export  {base}/Patient/$export  {base}/Group/{{id}}/$export"
            );
            let _ = out.flush();
            serve::run(listener, state, exporters, wake, config.repeat_period).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn require_schema(pool: &db::Pool) -> anyhow::Result<()> {
    let pending = db::pending_migrations(pool).await?;
    if !pending.is_empty() {
        bail!(
            "the database schema is not up to date (pending: {}); run `bulk-export migrate` first",
            pending.join(", ")
        );
    }
    Ok(())
}
