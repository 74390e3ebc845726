//! Benchmark: `bulk-export load` against the physical limit, in one run — a raw `COPY FROM` of
//! the same ndjson lines into a one-column table — alternating the two, on fresh databases.
//!
//! ```text
//! cargo build --release -p shared --bin bulk-export
//! cargo run --release -p integration-tests --bin bench-load -- [--data DIR] [--copies N] [--runs N]
//! ```
//! `--copies N` loads the data set N times with suffixed ids (×N the rows). Prints resources/s
//! of each and the ratio load / COPY. Databases are made on TEST_DATABASE_URL's server (default
//! postgres://postgres@127.0.0.1:5432/postgres) and dropped afterwards. Each timed phase starts
//! after a CHECKPOINT: neither pays for writing out what the one before it left in memory.
//! First, without a database, the loader's parsing alone (`bulk-export load --check`) with one
//! parser and with one per core: what parsing can feed Postgres on this machine.
//!
//! `--stages` then measures what Postgres spends on each table: the rows of a load are copied
//! out and replayed by one connection (binary `COPY FROM`, after a CHECKPOINT) into each table
//! of a fresh migrated database, `resources` also without its two checks, and prints the cost
//! per resource and the rate it allows on this machine's cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::SinkExt;

struct Args {
    data: PathBuf,
    copies: usize,
    runs: usize,
    bin: PathBuf,
    stages: bool,
}

const USAGE: &str = "usage: bench-load [--data DIR] [--copies N] [--runs N] [--bin PATH] [--stages]\n\
(what each does: the doc comment at the top of tests/src/bin/bench-load.rs, and docs/BENCHMARKS.md)";

fn args() -> anyhow::Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        data: integration_tests::shared_data("synthea-bulk-data-server-100")
            .unwrap_or_else(|| root.join("infra/sample-data/synthea-10")),
        copies: 1,
        runs: 2,
        bin: root.join("target/release/bulk-export"),
        stages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--stages" {
            a.stages = true;
            continue;
        }
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--data" => a.data = value()?.into(),
            "--copies" => a.copies = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--bin" => a.bin = value()?.into(),
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Writes out what earlier phases left dirty, so the next timed phase starts from the same
/// state (a CHECKPOINT needs a superuser or the pg_checkpoint role; without, it is skipped).
async fn settle(a: &tokio_postgres::Client) {
    if let Err(e) = a.batch_execute("CHECKPOINT").await {
        eprintln!("bench-load: no CHECKPOINT before a timed phase: {e}");
    }
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(&integration_tests::admin_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn url_for(name: &str) -> String {
    let admin = integration_tests::admin_url();
    format!("{}/{name}", admin.rsplit_once('/').map_or("", |(b, _)| b))
}

/// Streams a file into a COPY in chunks of 1 MiB (a ×100 table or type is gigabytes).
async fn send_file(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<bytes::Bytes>>,
    path: &Path,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    loop {
        let mut chunk = bytes::BytesMut::with_capacity(1 << 20);
        while chunk.len() < 1 << 20 {
            if file.read_buf(&mut chunk).await? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        sink.send(chunk.freeze()).await?;
    }
}

/// Seconds to COPY every line of the ndjson files into `raw(line text)` of a fresh database.
async fn raw_copy(dir: &Path) -> anyhow::Result<f64> {
    let name = format!("bench_copy_{}", uuid::Uuid::new_v4().simple());
    let a = admin().await?;
    a.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let result = async {
        let (client, conn) =
            tokio_postgres::connect(&url_for(&name), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE raw (line text NOT NULL)")
            .await?;
        settle(&a).await;
        let started = Instant::now();
        // CSV with quote and delimiter bytes that JSON never holds: each line arrives verbatim.
        let sink = client
            .copy_in("COPY raw FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')")
            .await?;
        futures::pin_mut!(sink);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for f in files {
            if f.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                continue;
            }
            send_file(sink.as_mut(), &f).await?;
        }
        sink.finish().await?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    }
    .await;
    a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

/// Seconds `bulk-export args` takes against the database at `url`.
fn run_bin(bin: &Path, url: &str, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "bulk-export {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds for `bulk-export load dir` into a fresh, migrated database.
async fn export_load(bin: &Path, dir: &Path) -> anyhow::Result<f64> {
    let name = format!("bench_load_{}", uuid::Uuid::new_v4().simple());
    let a = admin().await?;
    a.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let url = url_for(&name);
    let result = match run_bin(bin, &url, &["migrate"]) {
        Ok(_) => {
            settle(&a).await;
            run_bin(bin, &url, &["load", &dir.display().to_string()])
        }
        Err(e) => Err(e),
    };
    a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

/// The tables a load writes, with the columns it writes.
const LOADED_TABLES: [(&str, &str); 3] = [
    (
        "resources",
        "resource_type, id, version_id, last_updated, deleted, resource, patients",
    ),
    (
        "resource_refs",
        "source_type, source_id, target_types, target_ids, patients",
    ),
    ("compartment", "patient_id, resource_type, resource_id"),
];

/// Postgres's cost of a load, table by table: `dir` loaded once, each table's rows copied out
/// (binary) and replayed by one connection into a fresh migrated database; `resources` also
/// without its two checks. `parse` is one parser's seconds for the same resources.
async fn stages(bin: &Path, dir: &Path, resources: usize, parse: f64) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use tokio::io::AsyncWriteExt;
    let a = admin().await?;
    let (source, target) = (
        format!("bench_stage_src_{}", uuid::Uuid::new_v4().simple()),
        format!("bench_stage_dst_{}", uuid::Uuid::new_v4().simple()),
    );
    let files = integration_tests::temp_dir();
    let result = async {
        for name in [&source, &target] {
            a.batch_execute(&format!("CREATE DATABASE {name}")).await?;
            run_bin(bin, &url_for(name), &["migrate"])?;
        }
        run_bin(
            bin,
            &url_for(&source),
            &["load", &dir.display().to_string()],
        )?;
        let (src, conn) = tokio_postgres::connect(&url_for(&source), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for (table, columns) in LOADED_TABLES {
            let stream = src
                .copy_out(&format!(
                    "COPY (SELECT {columns} FROM {table}) TO STDOUT (FORMAT binary)"
                ))
                .await?;
            futures::pin_mut!(stream);
            let mut file = tokio::fs::File::create(files.join(table)).await?;
            while let Some(chunk) = stream.try_next().await? {
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
        }
        let (dst, conn) = tokio_postgres::connect(&url_for(&target), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let replay = |table: &'static str, columns: &'static str| {
            let (dst, a, path) = (&dst, &a, files.join(table));
            async move {
                dst.batch_execute(&format!("TRUNCATE {table}")).await?;
                settle(a).await;
                let started = Instant::now();
                let sink = dst
                    .copy_in(&format!(
                        "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
                    ))
                    .await?;
                futures::pin_mut!(sink);
                send_file(sink.as_mut(), &path).await?;
                let rows = sink.finish().await?;
                Ok::<_, anyhow::Error>((started.elapsed().as_secs_f64(), rows))
            }
        };
        let per = |secs: f64| secs * 1e6 / resources as f64;
        println!("| stage | rows | s | µs per resource |");
        println!("|---|---|---|---|");
        println!(
            "| parse (one parser) | {resources} | {parse:.2} | {:.1} |",
            per(parse)
        );
        let mut postgres = 0.0;
        for (table, columns) in LOADED_TABLES {
            let (secs, rows) = replay(table, columns).await?;
            postgres += secs;
            println!("| {table} | {rows} | {secs:.2} | {:.1} |", per(secs));
        }
        dst.batch_execute(
            "ALTER TABLE resources DROP CONSTRAINT resources_one_line,
                                   DROP CONSTRAINT resources_key_matches_json",
        )
        .await?;
        let (secs, rows) = replay(LOADED_TABLES[0].0, LOADED_TABLES[0].1).await?;
        println!(
            "| resources without its two checks | {rows} | {secs:.2} | {:.1} |",
            per(secs)
        );
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let each = per(postgres) + per(parse);
        println!(
            "Postgres {:.1} µs + parsing {:.1} µs = {each:.1} µs of CPU per resource: at most \
             {:.0} resources/s on this machine's {cores} cores, all of them busy with nothing else",
            per(postgres),
            per(parse),
            cores as f64 * 1e6 / each
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for name in [&source, &target] {
        a.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
    }
    std::fs::remove_dir_all(&files).ok();
    result
}

/// The loader's parsing alone, with one parser and with one per core (at least two); the
/// seconds of one parser.
async fn parse_only(dir: &Path, resources: usize) -> anyhow::Result<f64> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    println!("| parsers | parse s | parse res/s |");
    println!("|---|---|---|");
    let mut one = 0.0;
    for parsers in [1, cores] {
        let started = Instant::now();
        let report = shared::load::check_paths(
            &[dir.to_path_buf()],
            &shared::load::LoadOptions {
                parsers,
                ..Default::default()
            },
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        if report.loaded as usize != resources || !report.rejected.is_empty() {
            bail!(
                "the check counted {} resources and {} rejected lines, not {resources} and 0",
                report.loaded,
                report.rejected.len()
            );
        }
        println!("| {parsers} | {secs:.2} | {:.0} |", resources as f64 / secs);
        if parsers == 1 {
            one = secs;
        }
    }
    Ok(one)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    integration_tests::bench::require_binary(&args.bin)?;
    let (dir, resources, bytes) = integration_tests::bench::replicate(&args.data, args.copies)?;
    println!(
        "data: {} ×{} = {resources} resources, {:.1} MB of ndjson",
        args.data.display(),
        args.copies,
        bytes as f64 / 1e6
    );
    let parse = parse_only(&dir, resources).await?;
    println!("| run | raw COPY s | raw COPY res/s | load s | load res/s | load / COPY |");
    println!("|---|---|---|---|---|---|");
    for run in 1..=args.runs {
        let copy = raw_copy(&dir).await?;
        let load = export_load(&args.bin, &dir).await?;
        println!(
            "| {run} | {copy:.2} | {:.0} | {load:.2} | {:.0} | {:.2} |",
            resources as f64 / copy,
            resources as f64 / load,
            copy / load
        );
    }
    if args.stages {
        stages(&args.bin, &dir, resources, parse).await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
