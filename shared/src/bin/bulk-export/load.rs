//! `bulk-export load [--check] PATH…`: loads ndjson files, folders of them, or FHIR Bundle JSON
//! files; with --check, reads them as a load would without a database.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use shared::load;

#[derive(clap::Args)]
pub struct Args {
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
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let writers = args.writers.map_or_else(load::writer_count, usize::from);
    let options = load::LoadOptions {
        writers,
        max_resource_bytes: (args.max_resource_mb as usize) << 20,
        ..Default::default()
    };
    if args.check {
        let report = load::check_paths(&args.paths, &options).await?;
        return Ok(print_report(
            &report,
            started,
            "checked",
            "would be deleted",
        ));
    }
    // A connection per writer, whatever DATABASE_POOL_SIZE says.
    let (_, pool) = crate::open_database(|config| {
        config
            .database_pool_size
            .unwrap_or(0)
            .max(writers + load::ANALYZE_CONNECTIONS)
    })
    .await?;
    let started = Instant::now();
    let mut progress = shared::telemetry::Progress::new();
    let report = load::load_paths_with(&pool, &args.paths, &options, |n| {
        let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
        progress.update(&format!("loaded {n} resources ({rate:.0}/s)"));
    })
    .await;
    progress.finish();
    Ok(print_report(&report?, started, "loaded", "deleted"))
}

/// Prints a load's or check's report; exit status 2 when lines were rejected.
fn print_report(
    report: &load::LoadReport,
    started: Instant,
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
