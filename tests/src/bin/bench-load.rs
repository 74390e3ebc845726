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
}

fn args() -> anyhow::Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        data: integration_tests::shared_data("synthea-bulk-data-server-100")
            .unwrap_or_else(|| root.join("infra/sample-data/synthea-10")),
        copies: 1,
        runs: 2,
        bin: root.join("target/release/bulk-export"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without value")?;
        match flag.as_str() {
            "--data" => a.data = value.into(),
            "--copies" => a.copies = value.parse()?,
            "--runs" => a.runs = value.parse()?,
            "--bin" => a.bin = value.into(),
            other => bail!("unknown flag {other}"),
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
            let bytes = tokio::fs::read(&f).await?;
            for chunk in bytes.chunks(1 << 20) {
                sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
            }
        }
        sink.finish().await?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    }
    .await;
    a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

/// Seconds for `bulk-export load dir` into a fresh, migrated database.
async fn export_load(bin: &Path, dir: &Path) -> anyhow::Result<f64> {
    let name = format!("bench_load_{}", uuid::Uuid::new_v4().simple());
    let a = admin().await?;
    a.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let url = url_for(&name);
    let run = |args: &[&str]| -> anyhow::Result<f64> {
        let started = Instant::now();
        let out = Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "bulk-export {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let result = match run(&["migrate"]) {
        Ok(_) => {
            settle(&a).await;
            run(&["load", &dir.display().to_string()])
        }
        Err(e) => Err(e),
    };
    a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

/// The loader's parsing alone, with one parser and with one per core (at least two).
async fn parse_only(dir: &Path, resources: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    println!("| parsers | parse s | parse res/s |");
    println!("|---|---|---|");
    for parsers in [1, cores] {
        let started = Instant::now();
        let report = shared::load::check_paths(&[dir.to_path_buf()], Some(parsers)).await?;
        let secs = started.elapsed().as_secs_f64();
        if report.loaded as usize != resources || !report.rejected.is_empty() {
            bail!(
                "the check counted {} resources and {} rejected lines, not {resources} and 0",
                report.loaded,
                report.rejected.len()
            );
        }
        println!("| {parsers} | {secs:.2} | {:.0} |", resources as f64 / secs);
    }
    Ok(())
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
    parse_only(&dir, resources).await?;
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
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
